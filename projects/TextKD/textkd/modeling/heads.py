"""Deprecated alias of ``textkd.models.heads`` (issue 14), removed in the next release."""

# textkd-moved-alias
from textkd._moved import alias

alias(__name__, "textkd.models.heads")
