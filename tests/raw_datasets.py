"""Miniature raw downloads in the exact published layouts, written into a test's tmp_path.

Each image is a tiny JPEG whose colour depends on its class, so a model can learn something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()


def write_jpeg(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.array(colour)[None, None] + rng.integers(-30, 30, (size, size, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


# (Genmodel_ID, Maker, Genmodel, ads, colour): the last model has too few ads and is dropped.
DVM_MODELS = [
    ("10_1", "Abarth", "124 Spider", 12, (200, 40, 40)),
    ("2_11", "Audi", "A3", 12, (40, 200, 40)),
    ("2_3", "Audi", "A1", 12, (40, 40, 200)),
    ("7_2", "BMW", "X5", 5, (200, 200, 40)),
]
DVM_COLOURS = ["Black", "Blue", "Grey", "Red", "White"]


def make_dvm(root: Path, seed: int = 0) -> Path:
    """tables_V2.0/{Ad,Image,Price}_table.csv, "Ad_table (extra).csv" and resized_DVM/ images.

    Column names carry the stray spaces of the real tables; every ad has two images; one ad
    has no entry price for its registration year and one has no Engin_size.
    """
    rng = np.random.default_rng(seed)
    tables = root / "tables_V2.0"
    tables.mkdir(parents=True)
    ads = [
        "Maker, Genmodel, Genmodel_ID,Adv_ID,Adv_year,Adv_month,Color,Reg_year,Bodytype,Runned_Miles,Engin_size,"
        "Gearbox,Fuel_type,Price,Seat_num,Door_num"
    ]
    images = ["Genmodel_ID, Image_ID, Image_name, Predicted_viewpoint, Quality_check"]
    prices = ["Maker, Genmodel, Genmodel_ID, Year, Entry_price"]
    extra = ["Maker,Genmodel,Genmodel_ID,Adv_ID, Wheelbase,Height,Width,Length"]
    for k, (gid, maker, model, n_ads, colour) in enumerate(DVM_MODELS):
        for year in (2015, 2016, 2017):
            prices.append(f"{maker},{model},{gid},{year},{15000 + 1000 * k + year % 10}")
        for a in range(1, n_ads + 1):
            adv = f"{gid}$${a}"
            reg = 2015 + a % 3 if a != 2 else 2010  # ad 2: no price row for 2010, dropped by the merge
            colour_name = DVM_COLOURS[(a + k) % len(DVM_COLOURS)]
            engine = "" if (k, a) == (0, 3) else f"{1.0 + 0.4 * k:.1f}L"
            gearbox = "Manual" if a % 2 else "Automatic"
            fuel = "Petrol" if k % 2 == 0 else "Diesel"
            ads.append(
                f"{maker},{model},{gid},{adv},{2018 + a % 3},{1 + a % 12},{colour_name},{reg},"
                f"{'Hatchback' if k else 'Convertible'},{1000 * a + 17 * k},{engine},{gearbox},{fuel},"
                f"{9000 + 500 * k + 10 * a},{2 + 2 * (k > 0)},{3 + (k > 0)}"
            )
            wheelbase = "" if a == 4 else str(2400 + 100 * k)
            extra.append(f"{maker},{model},{gid},{adv},{wheelbase},{1400 + 20 * k},{1700 + 30 * k},{4000 + 200 * k}")
            for view in range(2):
                name = f"{maker}$${model}$${reg}$${colour_name}$${gid}$${a}$$image_{view}.jpg"
                images.append(f"{gid},{adv}$${view},{name},{view * 90},P")
                write_jpeg(root / "resized_DVM" / maker / model / str(reg) / colour_name / name, colour, rng)
    for name, lines in (
        ("Ad_table.csv", ads),
        ("Image_table.csv", images),
        ("Price_table.csv", prices),
        ("Ad_table (extra).csv", extra),
    ):
        (tables / name).write_text("\n".join(lines) + "\n")
    return root


def make_celeba(root: Path, n: int = 40, seed: int = 0) -> Path:
    """img_align_celeba/, list_attr_celeba.txt (space-aligned ±1) and list_eval_partition.txt."""
    rng = np.random.default_rng(seed)
    values = rng.choice([-1, 1], size=(n, len(CELEBA_ATTRIBUTES)))
    target = CELEBA_ATTRIBUTES.index("Attractive")
    values[:, target] = np.where(np.arange(n) % 2 == 0, 1, -1)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    partition = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        lines.append(name + "".join(f"{v:>3d}" for v in values[i]))
        partition.append(f"{name} {0 if i % 5 < 3 else (1 if i % 5 == 3 else 2)}")
        write_jpeg(root / "img_align_celeba" / name, (220, 160, 140) if values[i, target] > 0 else (90, 60, 50), rng)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return root


def sun_attribute_names() -> list[str]:
    names = [f"attribute {j}" for j in range(102)]
    names[89] = "open area"
    return names


def make_sun(root: Path, n: int = 40, seed: int = 0) -> Path:
    """attributes.mat, images.mat, attributeLabels_continuous.mat and images/<path>."""
    rng = np.random.default_rng(seed)
    names = sun_attribute_names()
    votes = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=(n, len(names)))
    votes[:, 89] = np.where(np.arange(n) % 2 == 0, 1.0, 1 / 3)
    paths = []
    for i in range(n):
        scene = ("a/abbey", "b/beach", "f/forest/broadleaf")[i % 3]
        path = f"{scene}/sun_{i:05d}.jpg"
        paths.append(path)
        write_jpeg(root / "images" / path, (100, 180, 250) if votes[i, 89] >= 0.5 else (60, 90, 40), rng)
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    scipy.io.savemat(root / "attributes.mat", {"attributes": cell})
    cell = np.empty((n, 1), dtype=object)
    cell[:, 0] = paths
    scipy.io.savemat(root / "images.mat", {"images": cell})
    scipy.io.savemat(root / "attributeLabels_continuous.mat", {"labels_cv": votes})
    return root


def make_table(root: Path, n: int = 48, seed: int = 0, split: bool = False) -> Path:
    """photos/*.jpg and table.csv: text labels, a text column, a numeric and a 0/1 column."""
    rng = np.random.default_rng(seed)
    species = ["cat", "dog", "fox"]
    lines = ["photo,species,weight,colour,indoor" + (",split" if split else "")]
    for i in range(n):
        label = i % 3
        write_jpeg(root / "photos" / f"p{i}.jpg", [(200, 50, 50), (50, 200, 50), (50, 50, 200)][label], rng)
        row = f"photos/p{i}.jpg,{species[label]},{3.0 + 2 * label + rng.normal():.3f},{['red', 'tan'][i % 2]},{i % 2}"
        lines.append(row + (f",{['train', 'train', 'val', 'test'][i % 4]}" if split else ""))
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    return root / "table.csv"


# (dx, colour, dx_type): dx_type follows the diagnosis, as in the release (follow-up is almost only nv)
HAM_CLASSES = [
    ("nv", (150, 90, 60), "follow_up"),
    ("mel", (40, 30, 30), "histo"),
    ("bkl", (200, 160, 110), "histo"),
    ("bcc", (230, 140, 160), "histo"),
]
HAM_BAD_ROWS = {
    "dx": "HAM_9000001,ISIC_9000001,xyz,histo,50.0,male,back",  # not one of the 7 diagnoses
    "no image": "HAM_9000002,ISIC_9000002,nv,histo,50.0,male,back",  # listed, but no file
    "no lesion": ",ISIC_9000003,nv,histo,50.0,male,back",
    "age": "HAM_9000004,ISIC_9000004,nv,histo,fifty,male,back",
}


def make_ham10000(
    root: Path,
    folders: tuple[str, ...] = ("HAM10000_images_part_1", "HAM10000_images_part_2"),
    bad: bool = False,
    missing_age: bool = True,
) -> Path:
    """HAM10000_metadata.csv and the images, spread over `folders` in turn.

    Per diagnosis 6 lesions with 1, 2 or 3 images each; with `missing_age`, two lesions (5
    images) have an empty age; sex and
    localization include `unknown`. With `bad`, the first lines are the rows of HAM_BAD_ROWS
    (their images exist unless the row says otherwise) and the last line repeats an image_id.
    """
    rng = np.random.default_rng(0)
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    if bad:
        lines += HAM_BAD_ROWS.values()
        for row in HAM_BAD_ROWS.values():
            image_id = row.split(",")[1]
            if image_id != "ISIC_9000002":
                write_jpeg(root / folders[0] / f"{image_id}.jpg", (150, 90, 60), rng)
    image = 0
    for c, (dx, colour, dx_type) in enumerate(HAM_CLASSES):
        for lesion in range(6):
            lesion_id = f"HAM_{c}{lesion:06d}"
            age = "" if missing_age and (c, lesion) in ((0, 4), (1, 2)) else f"{30 + 5 * lesion + c:.1f}"
            sex = ("male", "female", "unknown")[lesion % 3] if lesion != 5 else "female"
            place = ("back", "face", "trunk", "unknown")[(lesion + c) % 4]
            for _ in range(1 + lesion % 3):
                image_id = f"ISIC_{image:07d}"
                lines.append(f"{lesion_id},{image_id},{dx},{dx_type},{age},{sex},{place}")
                write_jpeg(root / folders[image % len(folders)] / f"{image_id}.jpg", colour, rng)
                image += 1
    if bad:
        lines.append(lines[-1])
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return root


# (diagnosis, colour, rows): the last class has 2 rows, too few for three splits
CLINIC_CLASSES = [("nv", (150, 90, 60), 250), ("mel", (40, 30, 30), 170), ("bkl", (200, 160, 110), 130)]
CLINIC_CLASSES += [("df", (90, 160, 200), 2)]
CLINIC_WORDS = ["itchy", "lesion", "raised", "dark", "border", "irregular", "follow", "up", "patient", "reports"]
CLINIC_SITES = ["back", "face", "arm", "leg"]


def make_clinic(root: Path, seed: int = 0, size: int = 12, rows: tuple[int, ...] | None = None) -> Path:
    """photos/*.jpg and visits.csv: a table of the kind a practitioner has (552 rows by default).

    Columns: record_id (a unique text id), photo, visit_date (ISO dates), notes (free text, a new
    sentence per row), income (written "234,311", quoted), smoker (yes/no), site (4 categories),
    age (with gaps), diagnosis (the class; `df` has 2 rows). Income and age carry some of the
    class. `rows` replaces the rows per class (nv, mel, bkl, df) for a smaller table.
    """
    rng = np.random.default_rng(seed)
    lines = ["record_id,photo,visit_date,notes,income,smoker,site,age,diagnosis"]
    start = np.datetime64("2021-01-01")
    row = 0
    counts = rows or [n for _, _, n in CLINIC_CLASSES]
    for c, ((dx, colour, _), count) in enumerate(zip(CLINIC_CLASSES, counts)):
        for _ in range(count):
            photo = f"photos/img{row:04d}.jpg"
            write_jpeg(root / photo, colour, rng, size)
            date = start + np.timedelta64(int(rng.integers(0, 900)), "D")
            note = " ".join(rng.choice(CLINIC_WORDS, 5)) + f" visit {row}"
            income = f'"{int(30_000 + 40_000 * c + rng.integers(0, 250_000)):,}"'
            smoker = ("yes", "no")[int(rng.random() < 0.3 + 0.2 * c)]
            site = CLINIC_SITES[int(rng.integers(0, 4))]
            age = "" if row % 17 == 5 else str(int(25 + 10 * c + rng.integers(0, 30)))
            lines.append(f"R-{100_000 + 37 * row},{photo},{date},{note},{income},{smoker},{site},{age},{dx}")
            row += 1
    order = [lines[0], *(lines[1:][i] for i in rng.permutation(row))]
    (root / "visits.csv").write_text("\n".join(order) + "\n")
    return root / "visits.csv"
