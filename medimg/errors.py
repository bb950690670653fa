"""The one error convention. Library code raises UserError, or one of its named kinds, for
a problem the user can fix, in one line that names the key, file or option; a program's
entry point (`run`, or `medimg`'s) prints that line and exits with status 1, so the user
sees one line, never a traceback. Anything else is a bug and keeps its traceback."""

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's params, data, files or options, said in one line."""


class ParamsError(UserError):
    """params.yaml, or a param this machine cannot honour."""


class DatasetError(UserError):
    """A dataset that cannot be used at all."""


class SplitError(UserError):
    """A split that cannot give an honest evaluation."""


class ModelError(UserError):
    """A model folder that cannot be used: no or an unreadable model.json, no ONNX export,
    ensemble members that do not fit together."""


def run(main: Callable[[], int | None]) -> None:
    """A program's entry point: `main`'s exit status, or a UserError's one line on stderr
    and status 1."""
    try:
        status = main()
    except UserError as error:
        sys.exit(str(error))
    sys.exit(status or 0)
