from gaal_cli.cli import app

app()
