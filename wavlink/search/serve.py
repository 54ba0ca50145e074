"""`wavlink-serve INDEX`: a small local search page over an index.

    wavlink-serve sounds.index                      # http://127.0.0.1:7860
    wavlink-serve sounds.index --port 8000 --root ~/sounds --device cuda

A text box, an upload or record field for an audio query, and results with file, time range, score and a player.
A small HTTP app on the standard library (no web framework to install): the index opens once when the server
starts, and every query is answered from memory. It listens on 127.0.0.1 unless told otherwise, and serves only audio
files that are in the index *and* inside `--root` (default: the folder that holds every indexed file): any other path,
`..` tricks included, gets 403.
"""

import argparse
import json
import os
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from ..loading import add_device_arguments, add_trust_remote_code_argument
from .searcher import WavLinkIndex

# Audio queries larger than this are refused (a minute of 48-kHz stereo wav is about 11 MB).
MAX_UPLOAD_BYTES = 50 * 2**20
UPLOAD_SUFFIXES = {"audio/webm": ".webm", "audio/ogg": ".ogg", "audio/mp4": ".m4a", "audio/mpeg": ".mp3",
                   "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/flac": ".flac"}  # fmt: skip
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
               ".m4a": "audio/mp4", ".aac": "audio/aac", ".opus": "audio/ogg", ".webm": "audio/webm"}  # fmt: skip

# The page: plain HTML and JavaScript, beside this module.
PAGE = (Path(__file__).parent / "page.html").read_text()


class SearchServer(ThreadingHTTPServer):
    """The HTTP server: holds the open index (searched under a lock: one model, many request threads)."""

    daemon_threads = True

    def __init__(self, address, index: WavLinkIndex, root: Path):
        super().__init__(address, SearchHandler)
        self.index, self.root, self.lock = index, root.resolve(), threading.Lock()
        self.indexed = set(index.table.paths)

    def allowed(self, requested: str) -> Path | None:
        """The file to send for `requested`, or None: only an indexed file inside the root, after resolving links and
        `..`."""
        try:
            path = Path(requested).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        if not path.is_relative_to(self.root) or str(path) not in self.indexed:
            return None
        return path

    def search(self, k: int, per_file: bool, **query) -> list[dict]:
        with self.lock:
            return [hit.as_dict() for hit in self.index.search(**query, k=k, per_file=per_file)]


class SearchHandler(BaseHTTPRequestHandler):
    server: SearchServer

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        url = urlparse(self.path)
        params = parse_qs(url.query)
        if url.path == "/":
            index = self.server.index
            summary = (f"{len(set(index.table.paths))} files, {len(index)} vectors of {index.dim} dimensions; "
                       f"model {index.catalogue.meta.get('model')}")  # fmt: skip
            return self._send(HTTPStatus.OK, PAGE.replace("__SUMMARY__", _escape(summary)).encode(), "text/html")
        if url.path == "/api/search":
            query = params.get("q", [""])[0].strip()
            if not query:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": "give a text query (?q=...)."})
            return self._answer(params, text=query)
        if url.path == "/audio":
            path = self.server.allowed(params.get("path", [""])[0])
            if path is None:
                return self._json(
                    HTTPStatus.FORBIDDEN, {"error": "only indexed audio files inside the root are served."}
                )
            return self._send(HTTPStatus.OK, path.read_bytes(), AUDIO_TYPES.get(path.suffix.lower(), "audio/wav"))
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

    def do_POST(self):  # noqa: N802
        url = urlparse(self.path)
        if url.path != "/api/search":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_UPLOAD_BYTES:
            limit = f"upload an audio clip of at most {MAX_UPLOAD_BYTES // 2**20} MB."
            return self._json(HTTPStatus.BAD_REQUEST, {"error": limit})
        body = self.rfile.read(length)
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        clip = {"bytes": body, "path": "upload" + UPLOAD_SUFFIXES.get(kind, "")}
        return self._answer(parse_qs(url.query), audio=clip)

    def _answer(self, params, **query):
        try:
            k = int(params.get("k", ["10"])[0])
            hits = self.server.search(k, self.server.index.catalogue.segment[0] > 0, **query)
        except ValueError as error:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        return self._json(HTTPStatus.OK, {"hits": hits})

    def _json(self, status, payload):
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # quiet: one line per request on stderr is noise for a local page
        pass


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def default_root(index: WavLinkIndex) -> Path:
    """The folder that holds every indexed file."""
    return Path(os.path.commonpath([os.path.dirname(p) for p in set(index.table.paths)]))


def make_server(index_path, host="127.0.0.1", port=7860, root=None, **open_options) -> SearchServer:
    index = WavLinkIndex.open(index_path, **open_options)
    return SearchServer((host, port), index, Path(root) if root else default_root(index))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wavlink-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index file written by wavlink-index")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--root", default=None, help="serve only audio inside this folder (default: the folder "
                        "holding every indexed file)")  # fmt: skip
    parser.add_argument("--model", default=None, help="override the model recorded in the index")
    add_trust_remote_code_argument(parser)
    add_device_arguments(parser, workers=False)
    args = parser.parse_args(argv)
    try:
        server = make_server(args.index, args.host, args.port, args.root, model=args.model, device=args.device,
                             trust_remote_code=args.trust_remote_code)  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"WavLink search on http://{args.host}:{server.server_port} ({len(server.index)} vectors; root {server.root})"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SearchServer", "make_server", "main"]
