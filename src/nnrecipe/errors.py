"""One exception type for mistakes a user can fix: train.py prints its message, no traceback."""


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message says what is wrong and how to fix it."""
