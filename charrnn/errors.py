"""The one exception type for mistakes a user can fix (bad config, bad files)."""


class CharRNNError(Exception):
    """A problem with the user's input: the message names it and says how to fix it.

    Entry points catch it, print the message without a traceback and exit with status 2.
    """
