"""HTML bodies: an allow-list sanitiser (nh3) and a plain-text rendering (html.parser).

`sanitize_html` keeps no scripts, no event handlers, no active URLs, and no remote loads unless
asked; links get rel="noopener noreferrer".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape as html_escape
from html.parser import HTMLParser

import nh3

from app.mail.charsets import clean_text

# --- HTML -------------------------------------------------------------------------------------

_TAGS = set(nh3.ALLOWED_TAGS) | {"font", "tfoot", "big", "address"}
_CLEAN_CONTENT_TAGS = set(
    "script style title template noscript iframe frame frameset object embed applet noembed"
    " noframes xmp".split()
)
_ATTRIBUTES = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRIBUTES["*"] = {"title", "dir", "lang", "align", "valign", "style", "bgcolor"}
for _tag, _attrs in {
    "img": {"border", "title"},
    "table": {"border", "cellpadding", "cellspacing", "width", "height", "bgcolor"},
    "td": {"width", "height", "nowrap"},
    "th": {"width", "height", "nowrap"},
    "font": {"color", "face", "size"},
    "a": {"title"},
}.items():
    _ATTRIBUTES.setdefault(_tag, set()).update(_attrs)
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid", "data"}
_STYLE_PROPERTIES = set(
    "background background-color border border-bottom border-collapse border-color "
    "border-left border-radius border-right border-spacing border-style border-top "
    "border-width clear color direction display float font font-family font-size "
    "font-style font-variant font-weight height letter-spacing line-height "
    "list-style-type margin margin-bottom margin-left margin-right margin-top max-height "
    "max-width min-height min-width overflow padding padding-bottom padding-left "
    "padding-right padding-top table-layout text-align text-decoration text-indent "
    "text-transform vertical-align white-space width word-break word-spacing".split()
)
_SAFE_CSS_FUNCTIONS = {"rgb", "rgba", "hsl", "hsla", "calc"}
_CSS_FUNCTION = re.compile(r"([\w-]*)\s*\(")
_SAFE_DATA_IMAGE = re.compile(r"data:image/(?:png|gif|jpeg|jpg|webp|bmp)[;,]", re.I)
_URL_NOISE = re.compile(r"[\x00-\x20]+")


def _safe_style(value: str) -> str | None:
    """Declarations without url(), image-set() or other functions that could load something."""
    kept = []
    for declaration in value.split(";"):
        if "\\" in declaration:  # CSS escapes could spell url( without the letters
            continue
        if any(
            m.group(1).lower() not in _SAFE_CSS_FUNCTIONS
            for m in _CSS_FUNCTION.finditer(declaration)
        ):
            continue
        kept.append(declaration)
    return ";".join(kept) or None


def _attribute_filter(allow_remote: bool) -> Callable[[str, str, str], str | None]:
    def keep(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "style":
            return _safe_style(value)
        if attribute not in ("href", "src", "cite"):
            return value
        url = _URL_NOISE.sub("", value).lower()
        if attribute == "src":
            if url.startswith("cid:") or _SAFE_DATA_IMAGE.match(url):
                return value
            if allow_remote and tag == "img" and url.startswith(("http://", "https://")):
                return value
            return None  # remote loads only when asked, and never relative ones
        if url.startswith(("http://", "https://")) or (
            attribute == "href" and url.startswith(("mailto:", "tel:"))
        ):
            return value
        return None  # javascript:, vbscript:, data:, cid: links and anything else

    return keep


def _cleaner(allow_remote: bool) -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=_TAGS,
        clean_content_tags=_CLEAN_CONTENT_TAGS,
        attributes=_ATTRIBUTES,
        attribute_filter=_attribute_filter(allow_remote),
        strip_comments=True,
        link_rel="noopener noreferrer",
        url_schemes=_URL_SCHEMES,
        url_relative="deny",  # a relative URL would resolve against this service's origin
        filter_style_properties=_STYLE_PROPERTIES,
    )


_CLEANERS = {False: _cleaner(False), True: _cleaner(True)}


def sanitize_html(html: str, *, allow_remote: bool = False) -> str:
    """HTML reduced to an allow-list; remote images only when `allow_remote`."""
    html = clean_text(html)
    try:
        return clean_text(_CLEANERS[bool(allow_remote)].clean(html))
    except Exception:  # never expected from nh3; fall back to inert text
        return html_escape(html_to_text(html))


_BLOCK_BREAK = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "ul", "ol"}
_BLOCK_BREAK |= {"table", "hr", "dl"}
_LINE_BREAK = {"div", "li", "tr", "dt", "dd", "section", "article", "header", "footer"}
_LINE_BREAK |= {"address", "center", "form", "fieldset", "figure", "figcaption", "main"}
_LINE_BREAK |= {"nav", "aside", "details", "summary", "caption"}
_SKIP_CONTENT = {"script", "style", "title", "template"}
_HTML_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextRenderer(HTMLParser):
    """Plain text from HTML: tags dropped, blocks on their own lines, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def _ends_with(self, chars: str) -> bool:
        return not self.out or self.out[-1][-1] in chars

    def _newlines(self, count: int) -> None:
        if not self.out:
            return
        tail = "".join(self.out[-3:])
        have = len(tail) - len(tail.rstrip("\n"))
        if have < count:
            self.out.append("\n" * (count - have))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_CONTENT:
            self.skip += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag in _BLOCK_BREAK:
            self._newlines(2)
            self.pre += tag == "pre"
        elif tag in _LINE_BREAK:
            self._newlines(1)
            if tag == "li":
                self.out.append("- ")
        elif tag in ("td", "th") and not self._ends_with("\n "):
            self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_CONTENT:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_BREAK:
            self._newlines(2)
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag in _LINE_BREAK:
            self._newlines(1)

    def handle_data(self, data: str) -> None:
        if self.skip or not data:
            return
        if not self.pre:
            data = _HTML_SPACE.sub(" ", data)
            if self._ends_with("\n "):
                data = data.lstrip(" ")
        if data:
            self.out.append(data)

    def text(self) -> str:
        lines = "".join(self.out).replace("\xa0", " ").split("\n")
        return _BLANK_LINES.sub("\n\n", "\n".join(line.rstrip() for line in lines)).strip("\n")


def html_to_text(html: str) -> str:
    """A plain-text rendering of `html` (html.parser based), for messages without text/plain."""
    renderer = _TextRenderer()
    try:
        renderer.feed(html)
        renderer.close()
    except Exception:  # html.parser asserts on some malformed declarations: keep what we have
        pass
    return clean_text(renderer.text())
