"""The engine's user-facing error, in a module that imports nothing heavy.

The Slicer scene layer reads model cards before torch is installed (Slicer installs it on first use),
so the error class that model-folder checks raise must not pull torch in.
"""


class InputError(ValueError):
    """Bad user input (image, labels, model folder, model/data mismatch). The message is for the user."""
