"""Deprecated alias of ``textkd.d2.teacher`` (issue 14), removed in the next release."""

# textkd-moved-alias
from textkd._moved import alias

alias(__name__, "textkd.d2.teacher")
