"""The one exception type for mistakes a user can fix (bad config, bad files)."""


class CharRNNError(Exception):
    """A problem with the user's input: the message names it and says how to fix it.

    Entry points catch it, print the message without a traceback and exit with status 2.
    """


def check_positive_int(key: str, value: object, where: str = "") -> None:
    """Raise a CharRNNError unless `value` is an int > 0 (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        hint = f" Set it on the command line (e.g. `{key}=...`) or in {where}." if where else ""
        raise CharRNNError(f"{key} must be a positive integer, got {value!r}.{hint}")
