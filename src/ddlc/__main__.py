from ddlc.cli.main import run

run()
