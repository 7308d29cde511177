"""Exceptions with a meaning for the command line."""


class UserError(Exception):
    """A problem with what the user asked for (bad flag, missing file, malformed data).

    The CLI prints ``rnnlab <command>: error: <message>`` on one line and exits with status 2, no traceback.
    Library code raises it (or ValueError/TypeError) with a message that names the component and says
    expected vs got.
    """
