"""``bitnet-edge demo``: the whole loop on one machine, no external service.

train a ternary MLP (QAT) and a ternary language model (QAT, numpy only, beside its float twin) ->
convert -> package signed bundles of both for 3 targets -> embedded broker + fleet service + 3 agents
-> staged rollout of the MLP -> inference over each agent's API -> the language model rolled out as a
second model, chatting (streamed) on every agent while the MLP keeps serving -> MLP release 2 as a
delta -> a tampered bundle and a release that fails the health gate (rollout pauses) -> summary.
Every summary line is computed from what happened (``summary.json`` holds the lines, the facts
they come from and the time each step took).
While the fleet runs, the operator's console is open at the printed URL (log in with the printed
token); ``--keep-open`` keeps the fleet and the agents running after the summary until Ctrl-C.
Everything lands in ``demo-output/``; every process started is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from bitnet_edge import demo_llm
from bitnet_edge import demo_summary as say
from bitnet_edge.demo_procs import ProcessGroup, bne

console = Console()

#: (device id, profile, kernel backend forced for its model worker, tags)
AGENTS = [("edge-v4-01", "x86-64-v4", None, ["lab"]),
          ("edge-v3-02", "x86-64-v3", "avx2", ["lab"]),
          ("edge-v2-03", "x86-64-v2", "ref", ["lab", "gateway"])]
TARGET_DEVICES = ["x86-64-v3", "raspberry-pi-5", "jetson-orin-nano"]
MLP = "digits"
SUMMARY_FILE = "summary.json"
TIMING_FILE = "demo-timing.json"


def _step(n: int, title: str) -> None:
    console.rule(f"[bold cyan]{n}. {title}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(port: int, method: str, path: str, body=None, timeout: float = 60):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                   "Content-Length": str(len(data or b""))})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    return r.status, (json.loads(raw) if raw and "json" in (r.getheader("Content-Type") or "") else raw.decode())


class Demo:
    def __init__(self, out: Path, quick: bool = False, keep_open: bool = False):
        self.out, self.quick, self.keep_open = out, quick, keep_open
        self.procs = ProcessGroup(out / "logs")
        self.summary: list[tuple[str, str]] = []
        self.facts: dict = {}  # what happened, as observed: the summary lines are computed from these
        self.timing: dict[str, float] = {}

    # ---- 1. train --------------------------------------------------------------------------------
    def train(self):
        from sklearn.datasets import load_digits

        from bitnet_edge.sdk import qat

        _step(1, "Train a ternary MLP with quantization-aware training (scikit-learn digits)")
        d = load_digits()
        x, y = d.data.astype(np.float32), d.target
        idx = np.random.default_rng(0).permutation(len(x))
        tr, te = idx[:1400], idx[1400:]
        self.x_test, self.y_test = x[te], y[te]
        epochs = 15 if self.quick else 40
        pf = qat.train_mlp(x[tr], y[tr], (128,), ternary=False, epochs=epochs, seed=0)
        p1 = qat.train_mlp(x[tr], y[tr], (128,), ternary=True, epochs=epochs, seed=0)
        # release 2: release 1 fine-tuned a little further (what a field update looks like)
        p2 = qat.train_mlp(x[tr], y[tr], (128,), ternary=True, epochs=3, lr=3e-4, seed=1, init=p1)
        acc = {"float32": qat.accuracy(pf, x[te], y[te], False),
               "ternary (post-training quantized)": qat.accuracy(pf, x[te], y[te], True),
               "ternary (QAT) release 1": qat.accuracy(p1, x[te], y[te], True),
               "ternary (QAT) release 2": qat.accuracy(p2, x[te], y[te], True)}
        t = Table(title="held-out accuracy (397 digits)")
        t.add_column("model")
        t.add_column("accuracy", justify="right")
        for k, v in acc.items():
            t.add_row(k, f"{v:.1%}")
        console.print(t)
        models = self.out / "models"
        models.mkdir(parents=True)
        names = [str(i) for i in range(10)]
        for r, p in (("r1", p1), ("r2", p2)):
            (models / r).mkdir()
            qat.save_npz(p, models / r / "digits.npz", names)
        # release 3: a much wider model - fine on AVX2/AVX-512, too slow for the scalar x86-64-v2 gateway
        p3 = qat.train_mlp(x[tr[:300]], y[tr[:300]], (4096, 4096, 4096), ternary=True, epochs=1, seed=0)
        (models / "r3").mkdir()
        qat.save_npz(p3, models / "r3" / "digits.npz", names)
        self.summary.append(("training", f"float {acc['float32']:.1%}, ternary QAT {acc['ternary (QAT) release 1']:.1%}"))
        self.accuracy = acc
        self.facts["mlp_accuracy"] = acc

    def train_llm(self):
        _step(2, "Train a ternary language model with QAT (BitNet b1.58 recipe, numpy) on the Python stdlib")
        console.print("absmean ternary weights, absmax int8 activations, straight-through estimator; the same "
                      "decoder trained in float beside it; text: this interpreter's standard library")
        self.lm_report = demo_llm.train(self.out / "llm", self.quick, console)
        self.llm_dir = Path(next(m.model_dir for m in self.lm_report.models if m.name == "ternary"))
        self.llm_name = json.loads((self.llm_dir / "manifest.json").read_text())["name"]
        r = self.lm_report
        console.print(f"trained {r.recipe.train.steps} steps on {r.corpus.train_tokens:,} tokens in {r.seconds:.0f} s "
                      f"({r.jobs} process(es)); the converted model gives the trainer's greedy tokens: "
                      f"{'yes' if r.parity.ok else '[red]NO[/red]'}")

    # ---- 3. convert + package -------------------------------------------------------------------
    def package(self):
        _step(3, "Convert and package signed bundles of both models (x86-64, raspberry-pi-5, jetson-orin-nano)")
        m, dist = self.out / "models", self.out / "dist"
        bne("keys", "generate", "--out", self.out / "keys")
        self.key, self.pub = self.out / "keys" / "signing.key", self.out / "keys" / "signing.pub"
        for r in ("r1", "r2", "r3"):
            conv = bne("convert", m / r / "digits.npz", "-o", m / r / "digits", "--precision", "ternary", "--json")
            assert conv["architecture"] == "mlp"
        deployed = self._deployed_accuracy(m / "r1" / "digits")
        console.print(f"release 1 converted: {deployed:.1%} through the native ternary kernels "
                      f"(QAT measured {self.accuracy['ternary (QAT) release 1']:.1%})")
        devs = [a for d in TARGET_DEVICES for a in ("--device", d)]
        r1 = bne("package", m / "r1" / "digits", *devs, "--version", "1.0.0", "--release", "1", "--key", self.key,
                 "-o", dist / "r1", "--json")
        bases = [a for b in r1 for a in ("--delta-from", b["bundle"])]
        r2 = bne("package", m / "r2" / "digits", *devs, "--version", "1.1.0", "--release", "2", "--key", self.key,
                 *bases, "-o", dist / "r2", "--json")
        r3 = bne("package", m / "r3" / "digits", "--device", "x86-64-v3", "--version", "2.0.0", "--release", "3",
                 "--key", self.key, "-o", dist / "r3", "--json")
        t = Table(title="bundles")
        for col in ("release", "target", "bytes", "ternary bits/weight", "delta bytes"):
            t.add_column(col, justify="right" if col != "target" else "left")
        for rel, res in (("1.0.0", r1), ("1.1.0", r2), ("2.0.0", r3)):
            for b in res:
                t.add_row(rel, b["target"], f"{b['size']:,}", f"{b['ternary_bits_per_weight']:.3f}",
                          f"{b['delta_size']:,}" if b.get("delta_size") else "-")
        console.print(t)
        self.bundles = {"r1": [Path(b["bundle"]) for b in r1],
                        "r2": [Path(b["bundle"]) for b in r2] + [Path(b["delta_bundle"]) for b in r2
                                                                 if b.get("delta_bundle")],
                        "r3": [Path(b["bundle"]) for b in r3]}
        self.r2_full = next(b for b in r2 if b["target"] == "linux-x86_64")
        lm = bne("package", self.llm_dir, *devs, "--version", "1.0.0", "--release", "1", "--key", self.key,
                 "-o", dist / "llm", "--json")
        self.llm_bundles = [Path(b["bundle"]) for b in lm]
        self.facts["llm"] = demo_llm.llm_facts(self.lm_report, lm)
        console.print(demo_llm.ppl_table(self.facts["llm"]))
        n = sum(len(v) for v in self.bundles.values()) + len(self.llm_bundles)
        self.facts["bundles"] = {"signed": n, "mlp_bits_per_weight": r1[0]["ternary_bits_per_weight"],
                                 "llm_bits_per_weight": lm[0]["ternary_bits_per_weight"]}
        self.summary.append(("bundles", f"{n} signed bundles; {r1[0]['ternary_bits_per_weight']:.2f} (MLP) and "
                                        f"{lm[0]['ternary_bits_per_weight']:.2f} (LLM) bits/weight on the wire"))
        self.summary.append(("language model", say.llm_line(self.facts["llm"])))

    def _deployed_accuracy(self, model_dir: Path) -> float:
        from bitnet_edge.sdk import load_model

        return float((load_model(model_dir).predict(self.x_test).argmax(1) == self.y_test).mean())

    # ---- 4. fleet + agents ----------------------------------------------------------------------
    def start(self):
        _step(4, "Start the embedded broker + fleet service and three agents")
        fleet = self.out / "fleet"
        self.fleet_data = fleet
        self.procs.start("fleet", "fleet", "serve", "--data", fleet, "--mqtt-port", "0", "--api-port", "0",
                         "--chunk-kib", "16", "--trust", self.pub, ready="control API")
        info = json.loads((fleet / "service.json").read_text())
        self.broker = info.get("broker") or info.get("broker_url")
        self.console_url, self.token = info["api"] + "/", (fleet / "control.token").read_text().strip()
        self._print_console()
        self.ports = {}
        t = Table(title="agents")
        for col in ("device", "profile", "kernels", "local API", "tags"):
            t.add_column(col)
        for dev, profile, kernel, tags in AGENTS:
            d = self.out / "agents" / dev
            d.mkdir(parents=True)
            port = _free_port()
            self.ports[dev] = port
            # the embedded broker admits enrolled devices only: a broker password and the fleet's key
            enrolled = d / "enroll"
            bne("fleet", "enroll", dev, "--data", fleet, "--broker", self.broker, "--trust", self.pub, "--out",
                enrolled, "--agent-data", d / "data", "--json")
            (d / "agent.toml").write_text("\n".join([
                f'device_id = "{dev}"', f'data_dir = "{d / "data"}"', f'trust = ["{self.pub}"]',
                f'fleet_keys = ["{enrolled / "desired.pub"}"]',
                f'profile = "{profile}"', "tags = [" + ", ".join(f'"{x}"' for x in tags) + "]",
                "[api]", f"port = {port}", "[mqtt]", f'url = "{self.broker}"', f'username = "{dev}"',
                f'password_file = "{enrolled / "mqtt.password"}"', "reconnect_max = 2.0",
                "[health]", "max_latency_ms = 50"]) + "\n")
            env = {"BITNET_EDGE_KERNEL": kernel} if kernel else {}
            self.procs.start(f"agent-{dev}", "agent", "run", "--config", d / "agent.toml", ready='"event": "ready"',
                             env=env)
            t.add_row(dev, profile, kernel or "auto (avx512)", f"http://127.0.0.1:{port}", ", ".join(tags))
        console.print(t)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            devs = bne("fleet", "devices", "--data", fleet, "--json")
            if sum(1 for x in devs if x.get("online")) == len(AGENTS):
                break
            time.sleep(0.5)
        console.print(f"fleet sees {sum(1 for x in devs if x.get('online'))} devices online (broker {self.broker})")

    def rollout(self, version: str, stages: str = "34,67,100", failure: float = 0.25, model: str = MLP) -> dict:
        fleet = self.fleet_data
        st = bne("fleet", "rollout", "create", model, version, "--stages", stages, "--success", "1.0",
                 "--failure", str(failure), "--timeout", "120", "--data", fleet, "--json")
        rid = st["id"]
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[state]}"), console=console) as prog:
            task = prog.add_task(f"rollout {model} {version}", total=st["devices"], state=st["state"])
            while True:
                st = bne("fleet", "rollout", "status", rid, "--data", fleet, "--json")
                stage = st["stages"][min(st["stage"], len(st["stages"]) - 1)]
                prog.update(task, completed=st["done"], state=f"{st['state']} - stage {stage:g}% "
                                                               f"{json.dumps(st['counts'])}")
                if st["state"] in ("completed", "paused", "aborted", "rolled_back"):
                    break
                time.sleep(0.5)
        members = Table(title=f"rollout {rid}: {st['state']}" + (f" ({st['reason']})" if st.get("reason") else ""))
        for col in ("device", "status", "stage", "reason"):
            members.add_column(col)
        for m in st["members"]:
            members.add_row(m["device_id"], m["status"], str(m["wave"]), m.get("reason") or "")
        console.print(members)
        self.facts.setdefault("rollouts", {})[f"{model} {version}"] = {
            k: st.get(k) for k in ("id", "state", "done", "devices", "counts", "reason")} | {
            "members": {m["device_id"]: m["status"] for m in st["members"]}}
        return st

    # ---- 5. the MLP ---------------------------------------------------------------------------
    def release1(self):
        _step(5, f"Publish {MLP} release 1.0.0 and roll it out in stages; inference through each agent")
        bne("fleet", "publish", *self.bundles["r1"], "--data", self.fleet_data, "--json")
        st = self.rollout("1.0.0")
        t = Table(title="inference over each agent's local API (/v1/infer, 397 held-out digits)")
        for col in ("device", "model", "accuracy", "latency (1 row)"):
            t.add_column(col)
        self.mlp_accuracy = {}
        for dev, port in self.ports.items():
            acc = self._mlp_accuracy(port)
            self.mlp_accuracy[dev] = acc
            t0 = time.perf_counter()
            _http(port, "POST", "/v1/infer", {"model": MLP, "inputs": self.x_test[:1].tolist()})
            ms = (time.perf_counter() - t0) * 1000
            t.add_row(dev, f"{MLP} {self._serving(quiet=True).get(dev, '-')}", "-" if acc is None else f"{acc:.1%}",
                      f"{ms:.1f} ms")
        console.print(t)
        self.facts["mlp_inference"] = self.mlp_accuracy
        self.summary.append((f"{MLP} 1.0.0", f"{say.rollout_line(st)}; {len(self.bundles['r1'])} bundles published"))

    def _mlp_accuracy(self, port: int) -> float | None:
        """Accuracy over the held-out digits through the agent's /v1/infer (None: no answer)."""
        code, r = _http(port, "POST", "/v1/infer", {"model": MLP, "inputs": self.x_test.tolist()})
        if code != 200 or not isinstance(r, dict) or r.get("classes") is None:
            return None
        return float((np.array(r["classes"]) == self.y_test).mean())

    # ---- 6. the language model as a second model ------------------------------------------------
    def release_llm(self):
        name = self.llm_name
        _step(6, f"Roll out the language model ({name}) as a second model; chat with it, streamed, on each agent")
        facts = self.facts["llm_rollout"] = {"model": name}
        single = [dev for dev in self.ports if not self._per_model_state(dev)]
        if single:
            facts["skipped"] = (f"{', '.join(single)} report no per-model state (ADR 0021): a second model would "
                                f"replace {MLP} there")
            console.print(f"[yellow]not rolled out: {facts['skipped']}[/yellow]")
            self.summary.append(("language model rollout", f"not rolled out: {facts['skipped']}"))
            return
        bne("fleet", "publish", *self.llm_bundles, "--data", self.fleet_data, "--json")
        st = self.rollout("1.0.0", model=name)
        listed = {dev: self._models(port) for dev, port in self.ports.items()}
        fleet_view = self._fleet_models()
        question = demo_llm.chat_question(self.lm_report)
        console.print(f"POST /v1/chat/completions {{\"model\": \"{name}\", \"stream\": true, ...}} on each agent; "
                      "the reply is printed as its tokens arrive", highlight=False)
        chats = {}
        for dev, port in self.ports.items():
            console.print(f"[bold]{dev}[/bold] models: {', '.join(listed[dev]) or '-'}")
            console.print(f"  [bold]user[/bold]: {question}", highlight=False)
            console.print("  [bold]assistant[/bold]: ", end="")
            res = demo_llm.stream_chat(port, name, question,
                                       lambda piece: console.print(piece, end="", markup=False, highlight=False,
                                                                   soft_wrap=True))
            console.print()
            if res.error:
                console.print(f"  [red]no reply: {res.error}[/red]", highlight=False)
            else:
                toks = (res.usage or {}).get("completion_tokens", res.pieces)
                console.print(f"  [dim]{toks} tokens in {res.seconds:.2f} s, first text after "
                              f"{(res.first_piece_s or 0) * 1000:.0f} ms, finish: {res.finish_reason}[/dim]")
            chats[dev] = res.as_dict()
        mlp_ok = {}
        for dev, port in self.ports.items():  # the first model is untouched by the second's install
            acc = self._mlp_accuracy(port)
            mlp_ok[dev] = acc is not None and acc == self.mlp_accuracy.get(dev)
        console.print(f"{MLP} after the {name} install: " + ", ".join(
            f"{d} {'same accuracy' if ok else '[red]CHANGED or not serving[/red]'}" for d, ok in mlp_ok.items()))
        facts.update(question=question, listed=listed, fleet_view=fleet_view, chats=chats, mlp_ok=mlp_ok)
        self.summary.append(("language model rollout", say.llm_rollout_line(name, st, listed, chats, MLP, mlp_ok)))
        self.summary.append(("models per device", say.fleet_models_line(fleet_view, [MLP, name])))

    def _fleet_models(self) -> dict[str, dict[str, str]]:
        """Every model on every device as the fleet sees it (``fleet devices``: the devices' reported
        state), printed as a table; {device: {model: version}}."""
        rows = bne("fleet", "devices", "--data", self.fleet_data, "--json")
        t = Table(title="the fleet's view: every model on every device (fleet devices)")
        for col in ("device", "model", "version", "release", "health"):
            t.add_column(col)
        view: dict[str, dict[str, str]] = {}
        for r in sorted(rows, key=lambda r: r["id"]):
            view[r["id"]] = {}
            for m in r.get("models") or []:
                inst = m.get("installed") or {}
                view[r["id"]][m["name"]] = inst.get("version") or "-"
                t.add_row(r["id"], m["name"], inst.get("version") or "-", str(inst.get("release") or "-"),
                          m.get("health") or "-")
        console.print(t)
        return view

    def _models(self, port: int) -> list[str]:
        """The models an agent lists on GET /v1/models (OpenAI's list)."""
        code, r = _http(port, "GET", "/v1/models")
        return sorted(m["id"] for m in r.get("data", [])) if code == 200 and isinstance(r, dict) else []

    def _per_model_state(self, dev: str) -> bool:
        """Whether the agent reports its models one by one (ReportedState.models, ADR 0021)."""
        st = bne("agent", "status", "--config", self.out / "agents" / dev / "agent.toml", "--json", check=False)
        models = (st.get("state") or {}).get("models") if isinstance(st, dict) else None
        return bool(models) and any(m.get("name") == MLP for m in models)

    def release2(self):
        _step(7, f"{MLP} release 1.1.0 as a delta")
        bne("fleet", "publish", *self.bundles["r2"], "--data", self.fleet_data, "--json")
        before = self._bytes_sent()
        st = self.rollout("1.1.0")
        sent = self._bytes_sent() - before
        full = self.r2_full["size"] * len(AGENTS)
        console.print(f"bytes sent to {len(AGENTS)} devices: {sent:,} (full bundles would be {full:,}: "
                      f"[bold green]{1 - sent / full:.0%} saved[/bold green])")
        self.facts["delta"] = {"bytes_sent": sent, "full_bytes": full}
        self.summary.append((f"{MLP} 1.1.0 (delta)",
                             f"{say.rollout_line(st)}; {sent:,} bytes sent instead of {full:,}"))

    def _bytes_sent(self) -> int:
        from bitnet_edge.fleet.client import ControlClient

        text = ControlClient.from_data_dir(self.fleet_data).metrics()
        return int(sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("bne_fleet_bytes_sent_total")))

    def bad_releases(self):
        _step(8, "A tampered bundle, and a release that fails its health gate")
        good = next(b for b in self.bundles["r3"] if b.name.endswith("linux-x86_64.bundle"))
        tampered = self.out / "dist" / "tampered.bundle"
        data = bytearray(good.read_bytes())
        data[len(data) // 2] ^= 0x01
        tampered.write_bytes(bytes(data))
        res = bne("fleet", "publish", tampered, "--data", self.fleet_data, "--json", check=False)
        err = res.get("error") if isinstance(res, dict) else None
        fleet = ({"refused": True, "reason": err.get("reason"), "detail": err.get("detail")} if err
                 else {"refused": False, "published": res})
        console.print("fleet publish of the tampered bundle: " + (
            f"[red]refused[/red] ({fleet['reason']}) - {fleet['detail']}" if fleet["refused"]
            else "[bold red]ACCEPTED[/bold red]"), highlight=False)
        agents = {}
        for dev in self.ports:  # `agent install`: the admin routes answer on the agent's Unix socket only
            o = bne("agent", "install", tampered, "--config", self.out / "agents" / dev / "agent.toml", "--json",
                    check=False)
            if isinstance(o, dict) and "result" in o:
                agents[dev] = {"result": o["result"], "reason": o.get("reason"), "message": o.get("message")}
            else:
                e = (o.get("error") or {}) if isinstance(o, dict) else {}
                agents[dev] = {"error": f"{e.get('reason')}: {e.get('detail')}" if e else str(o)[:200]}
            a = agents[dev]
            console.print(f"  {dev}: " + (f"[red]{a['result']}[/red] ({a['reason']}): {str(a['message'])[:100]}"
                                          if "result" in a else f"[yellow]no outcome[/yellow]: {a['error']}"),
                          highlight=False)
        self.facts["tampered"] = {"sha256": hashlib.sha256(tampered.read_bytes()).hexdigest(),
                                  "fleet": fleet, "agents": agents}
        self.summary.append(("tampered bundle", say.tampered_line(fleet, agents)))
        console.print("release 2.0.0 is a much wider model: fine on AVX2/AVX-512, too slow for the scalar "
                      "x86-64-v2 gateway's 50 ms latency budget")
        bne("fleet", "publish", *self.bundles["r3"], "--data", self.fleet_data, "--json")
        st = self.rollout("2.0.0", stages="34,100", failure=0.25)
        self._serving()
        self.summary.append((f"{MLP} 2.0.0", say.rollout_line(st)))
        if st["state"] == "paused":
            console.print("the rollout paused by itself; the operator rolls it back:")
            back = bne("fleet", "rollout", "rollback", st["id"], "--data", self.fleet_data, "--json")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                versions = self._serving(quiet=True)
                if set(versions.values()) == {"1.1.0"}:
                    break
                time.sleep(0.5)
            serving = self._serving()
            self.facts["rollback"] = {"state": back.get("state"), "serving": serving}
            self.summary.append(("rollback", say.rollback_line(str(back.get("state", back)), serving)))

    def _serving(self, quiet: bool = False) -> dict[str, str]:
        """The MLP's version on each agent, as its /v1/health answers ('-': none)."""
        out = {}
        for dev, port in self.ports.items():
            code, h = _http(port, "GET", "/v1/health")
            h = h if isinstance(h, dict) else {}
            per_model = h.get("models") if isinstance(h.get("models"), dict) else {}  # ADR 0021: by name
            inst = (per_model.get(MLP) or {}).get("model") if per_model else h.get("model")
            out[dev] = (inst or {}).get("version") or "-"
            if not quiet:
                console.print(f"  {dev} serves {MLP} {out[dev]}")
        return out

    def _print_console(self) -> None:
        console.print(f"[bold]fleet console[/bold]: [link={self.console_url}]{self.console_url}[/link]  "
                      f"token: [bold]{self.token}[/bold]  (open it in a browser while the demo runs)", highlight=False)

    def _hold(self) -> None:
        """--keep-open: leave the fleet and the agents running until Ctrl-C / SIGTERM."""
        console.rule("[bold cyan]The fleet keeps running (--keep-open)")
        self._print_console()
        console.print("agents: " + ", ".join(f"{d} http://127.0.0.1:{p}" for d, p in self.ports.items()) +
                      f"\nlogs: {self.procs.log_dir}/", highlight=False)
        console.print("press Ctrl-C to stop everything")
        while all(p.poll() is None for _, p in self.procs.procs):
            time.sleep(1.0)
        console.print("[yellow]a demo process exited; stopping the rest[/yellow]")

    def run(self):
        import signal

        def _term(*_):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, _term)  # `kill` stops the demo's processes too, like Ctrl-C
        steps = [("train MLP", self.train), ("train LLM", self.train_llm), ("package", self.package),
                 ("start fleet and agents", self.start), (f"{MLP} 1.0.0", self.release1),
                 ("LLM rollout and chat", self.release_llm), (f"{MLP} 1.1.0 delta", self.release2),
                 ("tampered bundle and health gate", self.bad_releases)]
        t_start = time.perf_counter()
        load_start = os.getloadavg()
        try:
            for name, fn in steps:
                t0 = time.perf_counter()
                fn()
                self.timing[name] = round(time.perf_counter() - t0, 2)
            self.timing["total"] = round(time.perf_counter() - t_start, 2)
            self._write_timing(load_start)
            self._summary()
            if self.keep_open:
                try:
                    self._hold()
                except KeyboardInterrupt:
                    console.print("stopping the fleet and the agents")
        finally:
            self.procs.stop_all()

    def _write_timing(self, load_start: tuple) -> None:
        """``demo-timing.json``: the wall time of each step and of the whole demo (after installs, until
        the summary; ``--keep-open`` time is not counted), with the machine it ran on."""
        doc = {"format": "bitnet-edge-demo-timing", "format_version": 1, "quick": self.quick,
               "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": self.timing,
               "cpus": os.cpu_count(), "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
               "python": platform.python_version(), "machine": platform.machine(),
               "llm": {k: self.facts.get("llm", {}).get(k) for k in ("steps", "train_tokens", "training_seconds")}}
        (self.out / TIMING_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    def _summary(self) -> None:
        _step(9, "Summary")
        t = Table(title=f"demo - artifacts and logs in {self.out}/")
        t.add_column("step")
        t.add_column("result")
        for k, v in self.summary:
            t.add_row(k, v)
        t.add_row("wall time", f"{self.timing['total']:.0f} s until this summary ({self.out / TIMING_FILE})")
        t.add_row("console", f"{self.console_url} (token in {self.fleet_data / 'control.token'}; " +
                  ("open until Ctrl-C)" if self.keep_open else "closed with the demo: --keep-open keeps it)"))
        console.print(t)
        (self.out / SUMMARY_FILE).write_text(json.dumps(
            {"lines": dict(self.summary), "facts": self.facts, "seconds": self.timing}, indent=2) + "\n")


def run_demo(out: str | Path = "demo-output", quick: bool = False, keep_open: bool = False) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    Demo(out.resolve(), quick, keep_open).run()
    return out
