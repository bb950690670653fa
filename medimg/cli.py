"""The programs that use a trained model outside the pipeline, as one console command:

    medimg predict PATH... [options]   classify image files (medimg.serving.predict)
    medimg serve [options]             the web service and its page (medimg.serving.serve)

`pip install -r requirements.txt` installs it (also `python -m medimg`); `medimg predict
--help` and `medimg serve --help` list the options.
"""

import sys

from medimg.errors import run


def dispatch(argv: list[str]) -> int:
    command, options = (argv[0], argv[1:]) if argv else ("", [])
    # Imported on demand: predict need not load the web stack.
    if command == "predict":
        from medimg.serving import predict
        return predict.main(options)
    if command == "serve":
        from medimg.serving import serve
        serve.run(options)
        return 0
    asked = command in ("-h", "--help")  # asked for, the usage is output; else an error
    print(__doc__.strip(), file=sys.stdout if asked else sys.stderr)
    return 0 if asked else 2


def main(argv: list[str] | None = None) -> None:
    """`medimg ...`: a UserError ends it with its one line and status 1."""
    run(lambda: dispatch(sys.argv[1:] if argv is None else argv))
