"""Analysis of finished runs: `gaal report`'s tables, paired differences, ranks, health marks and
figures, `gaal compare`, statistics and figure styles. Imports every layer below; trains nothing."""
