"""A fix to nats-py's protocol parser: subjects with vertical tab or form feed.

nats-py (2.16) matches ``MSG``/``HMSG`` lines with ``\\s``, which in a bytes pattern also
matches ``\\x0b`` and ``\\x0c``. nats-server takes only space and tab as separators (as the
protocol says), so it delivers a subject such as ``ai.voice.stream.a\\x0bb`` that any
publisher may send; nats-py then fails to parse the line, calls it an unknown protocol and
drops the connection, losing whatever the server was sending meanwhile. One hostile publish
would disconnect every worker. `harden` swaps in patterns that split on space and tab only;
the worker then sees the odd subject and refuses it (``invalid_session_id``).
"""

from __future__ import annotations

import logging
import re

from nats.protocol import parser

logger = logging.getLogger(__name__)

_FIELD = rb"([^ \t\r\n]+)"
_SEP = rb"[ \t]+"
_MSG_LINE = rb"MSG" + _SEP + _FIELD + _SEP + _FIELD + _SEP + rb"(" + _FIELD + _SEP + rb")?(\d+)\r\n"
_HMSG_LINE = (
    rb"HMSG"
    + _SEP
    + _FIELD
    + _SEP
    + _FIELD
    + _SEP
    + rb"("
    + _FIELD
    + _SEP
    + rb")?(\d+)"
    + _SEP
    + rb"(\d+)\r\n"
)
MSG_RE = re.compile(rb"\A" + _MSG_LINE)
HMSG_RE = re.compile(rb"\A" + _HMSG_LINE)
# The same lines matched where `pattern.match(buffer, pos)` starts (`\A` only matches at 0),
# for `shed_parser.ShedParser`, which walks a buffer by offset instead of trimming it per line.
MSG_AT = re.compile(_MSG_LINE)
HMSG_AT = re.compile(_HMSG_LINE)
# The patterns this fix replaces; any other nats-py is left alone.
_KNOWN_MSG = rb"\AMSG\s+([^\s]+)\s+([^\s]+)\s+(([^\s]+)[^\S" + b"\r\n" + rb"]+)?(\d+)" + b"\r\n"


def harden() -> bool:
    """Install the stricter patterns; True when nats-py's parser has them now."""
    if parser.MSG_RE is MSG_RE:
        return True
    if parser.MSG_RE.pattern != _KNOWN_MSG:
        logger.warning("nats-py's parser is not the one this fix knows; left unchanged")
        return False
    parser.MSG_RE = MSG_RE
    parser.HMSG_RE = HMSG_RE
    return True
