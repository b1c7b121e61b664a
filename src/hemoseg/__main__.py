from hemoseg.cli.main import entry

entry()
