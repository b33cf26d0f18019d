"""What `npx cdk` runs (cdk.json "app"): ddlc's CDK app, from whichever Python has ddlc installed.

    python3 (the active environment: AMI conda env, activated venv, system) has ddlc -> run the app
    it does not, and this checkout has .venv (make venv)                           -> run it with .venv's Python
    neither                                                                        -> one line saying what to do

Only the standard library is used until ddlc is found, so any python3 can start it.
"""

import os
import sys
from pathlib import Path

VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"


def main() -> None:
    try:
        from ddlc.infra.app import main as app_main
    except ModuleNotFoundError as missing:
        # (A venv's python is a symlink to the base interpreter: compare environments by the guard, not by path.)
        if VENV_PYTHON.exists() and not os.environ.get("DDLC_CDK_REEXEC"):
            os.environ["DDLC_CDK_REEXEC"] = "1"  # once: never loop between interpreters
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
        print(f"error: the CDK app needs ddlc with its infra extras, but {sys.executable} cannot import "
              f"{missing.name!r}. Activate the environment where ddlc is installed (pip install 'ddlc[infra]'), "
              "or run `make venv` in this checkout, then run npx cdk again", file=sys.stderr)
        sys.exit(1)
    app_main()


if __name__ == "__main__":
    main()
