"""``directory``: static files (welcome file, mime mappings), e.g. the demo page.

Files are served only from inside the configured directory: paths are resolved
and checked, so ``..`` and symlinks that leave it give 404. Hidden files and folders
(any path segment starting with ``.``: ``.git/``, ``.env``, ``.htpasswd``) give the same
404 and are left out of listings, unless the property ``hidden-files: allow`` says otherwise.
"""

from __future__ import annotations

import html
import mimetypes
import re
from pathlib import Path
from urllib.parse import quote

from ..config.model import Service
from ..config.schema import Property
from ..config.values import parse_choice
from ..core.handshake import Handshake, Reply
from ..errors import ConfigError
from .base import HttpService, Runtime, ServiceType

DEFAULT_MIME = {
    "html": "text/html",
    "js": "text/javascript",
    "mjs": "text/javascript",
    "css": "text/css",
    "json": "application/json",
    "svg": "image/svg+xml",
    "png": "image/png",
    "txt": "text/plain",
}
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


class DirectoryService(HttpService):
    TYPE = ServiceType(
        name="directory",
        accept=("http", "https"),
        properties={
            "directory": Property("1"),
            "welcome-file": Property("?"),
            "error-pages-directory": Property("?"),
            "options": Property("?", lambda text: parse_choice(text, ("indexes",))),
            "hidden-files": Property("?", lambda text: parse_choice(text, ("deny", "allow"))),
            "location": Property("*", fields=("patterns", "cache-control"), listed=False),  # cache rules
        },
        plain_http=True,
        cors=True,
        prefix=True,
        web_root=True,
    )

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.root = Path()
        self.welcome = config.prop("welcome-file")
        self.mime = {**DEFAULT_MIME, **config.mime_mappings}
        self.prefix = config.accepts[0].path.rstrip("/")
        self.error_pages: Path | None = None
        # The text as written, as before issue 12: only the documented spelling lists folders (the schema
        # accepts any case, and "Indexes" never exposed a folder's file names; it must not start to on upgrade).
        self.indexes = config.prop("options") == "indexes"
        self.hidden_files = config.setting("hidden-files") == "allow"
        self.cache_rules = [_cache_rule(rule) for rule in config.properties.get("location", ())]

    def configure(self, web_root: Path) -> None:
        """Resolve ``directory`` under the web root (Kaazing: GATEWAY_HOME/web)."""
        path = f"service[{self.name}]/properties/directory"
        directory = (web_root / (self.config.prop("directory") or "").lstrip("/")).resolve()
        if not directory.is_dir():
            raise ConfigError(
                path, f"{str(directory)!r} is not a directory (resolved under web root {str(web_root)!r})"
            )
        self.root = directory
        if (errors := self.config.prop("error-pages-directory")) is not None:
            self.error_pages = (web_root / errors.lstrip("/")).resolve()

    async def reply(self, handshake: Handshake) -> Reply:
        """The file, folder listing, redirect or error for a GET or HEAD (admission adds CORS)."""
        if handshake.method not in ("GET", "HEAD"):
            return Reply(405, headers=(("Allow", "GET, HEAD"), *SECURITY_HEADERS))
        path = handshake.path
        relative = path[len(self.prefix) :]
        file = self.resolve(relative)
        if file is not None and file.is_dir():
            if not path.endswith("/"):
                # One leading slash: "//sub/" would send the browser to the host "sub".
                location = quote("/" + path.lstrip("/")) + "/"
                return Reply(301, headers=(("Location", location), *SECURITY_HEADERS))
            return self.listing(file, path)
        if file is None:
            return self.not_found()
        headers = [("Content-Type", self.content_type(file)), *SECURITY_HEADERS]
        name = file.relative_to(self.root).as_posix()
        for pattern, cache_control in self.cache_rules:
            if pattern.fullmatch(name):
                headers.append(("Cache-Control", cache_control))
                break
        return Reply(200, headers=tuple(headers), file=file)

    def resolve(self, relative: str) -> Path | None:
        """The file or folder to serve, or None (404) for anything outside the root or hidden.

        ``relative`` is already percent-decoded (``%2e`` is a dot), and both it and the resolved
        path are checked: a symlink to a hidden file is as hidden as the file. A path the file
        system cannot even look up (``%00``, a name longer than it allows) is missing too.
        """
        if self.hidden(relative):
            return None
        try:
            return self._existing((self.root / relative.lstrip("/")).resolve())
        except (OSError, ValueError):  # ValueError: an embedded NUL; OSError: ENAMETOOLONG and the like
            return None

    def _existing(self, candidate: Path) -> Path | None:
        if not candidate.is_relative_to(self.root) or self.hidden("/".join(candidate.relative_to(self.root).parts)):
            return None
        if candidate.is_dir():
            welcome = candidate / self.welcome if self.welcome else None
            if welcome is not None and welcome.is_file():
                return welcome
            return candidate if self.indexes else None
        return candidate if candidate.is_file() else None

    def hidden(self, relative: str) -> bool:
        """Any segment starting with ``.`` (``..`` included) is refused unless ``hidden-files: allow``."""
        if self.hidden_files:
            return False
        return any(segment.startswith(".") for segment in relative.replace("\\", "/").split("/"))

    def listing(self, folder: Path, path: str) -> Reply:
        """``options indexes``: a plain HTML list of the folder's entries (names escaped)."""
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not self.hidden(p.name))
        items = "".join(f'<li><a href="{quote(e)}">{html.escape(e)}</a></li>' for e in entries)
        title = html.escape(path)
        body = f"<!doctype html><title>{title}</title><h1>{title}</h1><ul>{items}</ul>"
        return Reply(200, body.encode(), SECURITY_HEADERS, "text/html; charset=utf-8")

    def content_type(self, file: Path) -> str:
        ext = file.suffix.lstrip(".").lower()
        mime = self.mime.get(ext) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return f"{mime}; charset=utf-8" if mime.startswith("text/") and "charset" not in mime else mime

    def not_found(self) -> Reply:
        page = self.error_pages / "404.html" if self.error_pages else None
        if page and page.is_file():
            return Reply(404, headers=SECURITY_HEADERS, content_type="text/html; charset=utf-8", file=page)
        return Reply.text(404, "Not Found\n", SECURITY_HEADERS)


def _cache_rule(rule: str) -> tuple[re.Pattern[str], str]:
    """``patterns`` (Ant style: ``**/*``, ``*.js``, comma or space separated) → one regex."""
    patterns, _, cache_control = rule.partition("\n")
    alternatives = []
    for pattern in re.split(r"[\s,]+", patterns.strip()):
        regex = re.escape(pattern.lstrip("/"))
        regex = (
            regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        )
        alternatives.append(regex)
    return re.compile("|".join(f"(?:{a})" for a in alternatives if a)), cache_control.strip()
