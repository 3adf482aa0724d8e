"""Text a user, a URL, a corpus or a store controls, made safe to put into Streamlit Markdown.

Streamlit renders every caption, notice (`st.info/warning/error/success`), title, `st.markdown`
and widget help as Markdown with extensions: links and bare URLs (`www.x`, `http://x`, `a@b.c`
become live links), `$...$` KaTeX, `:red[...]` colour directives, `:smile:` emoji shortcodes,
`:material/x:` icons, and HTML entities. `md(text)` returns Markdown that the real frontend shows
as exactly `text` (checked in Chromium by tests/test_markup.py):

- every ASCII punctuation character with a meaning there (`#`, `+`, `-`: at the start) is
  backslash-escaped (CommonMark lets any of them be), which stops emphasis, links, code spans,
  headings, lists, HTML, entities (`&`), KaTeX (`\\$`) and directives;
- a WORD JOINER (U+2060, invisible, zero width) goes after every `:` and `@` and before every `.`:
  emoji shortcodes, material icons and GFM's bare-URL and e-mail autolinks are found by regular
  expressions on the *unescaped* text, which backslashes alone do not stop;
- line breaks become spaces (a notice is one paragraph), and runs of spaces one space (as HTML
  shows them anyway; four would start a code block).

`code(text)` is the same text as an inline code span (for paths and identifiers). Pages build a
message from fixed Markdown and `md(value)` parts; nothing here imports Streamlit.
"""

from __future__ import annotations

import re

WORD_JOINER = "\u2060"
# The ASCII punctuation that means something to CommonMark, GFM or Streamlit's extensions at any
# position of a one-line paragraph ('"=,;?%/^@ do not: left alone, they read as they are), and
# what means something only at its start.
_PUNCT = frozenset("\\`*_[]()<>|~$&!{}:.")
_LEADING = frozenset("#+-")  # headings and list items: markup only where a line starts
_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")
_SPACES = re.compile(r"[ \t]{2,}")  # four leading spaces would start a code block; HTML collapses runs anyway


def md(text: object) -> str:
    """`text` (anything; str() of it) as Markdown that renders as that text and nothing else."""
    out: list[str] = []
    start = True  # no visible character yet
    for ch in _SPACES.sub(" ", _BREAKS.sub(" ", str(text).replace(WORD_JOINER, ""))):
        if ch == ".":
            out.append(WORD_JOINER)
        if ch in _PUNCT or (start and ch in _LEADING):
            out.append("\\")
        start = start and ch in " \t"
        out.append(ch)
        if ch in ":@":
            out.append(WORD_JOINER)
    return "".join(out)


def code(text: object) -> str:
    """`text` as an inline code span (monospace), shown literally whatever backticks it holds."""
    body = _BREAKS.sub(" ", str(text)).replace(":", ":" + WORD_JOINER)  # `:material/x:` is replaced even in code
    fence = "`" * (max((len(run) for run in re.findall("`+", body)), default=0) + 1)
    return f"{fence} {body} {fence}"


def unescape(markdown: str) -> str:
    """The text `md` was given (without its line breaks): for tests and for checking a fragment."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown.replace(WORD_JOINER, ""))


def is_escaped(fragment: str) -> bool:
    """True when `fragment` is exactly what `md` makes of some text (every markup character escaped)."""
    return md(unescape(fragment)) == fragment
