"""Deprecated alias of ``textkd.models.outputs`` (issue 14), removed in the next release."""

# textkd-moved-alias
from textkd._moved import alias

alias(__name__, "textkd.models.outputs")
