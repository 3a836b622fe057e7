"""Server configuration: one YAML file, validated at load.

A bad file is refused with :class:`ConfigError`, whose message names the
file, the line and the field (``frontdesk.yaml:12: sip.ring_limit: ...``).
Every setting has a default, so the server runs with no file at all
(``make run``): SQLite, in-process state, SIP on 127.0.0.1:5060, HTTP on
127.0.0.1:8080.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from ivr.settings import queues
from ivr.settings.base import Loc, Problem, Strict, explain, raise_problems, read_yaml, text_line
from ivr.settings.callbacks import CallbackSettings
from ivr.settings.cluster import ClusterSettings
from ivr.settings.flows import IvrSettings
from ivr.settings.queues import AgentSettings, QueueSettings, SurgeSettings, default_queues
from ivr.settings.security import SecuritySettings
from ivr.settings.server import (
    AdminSettings,
    HttpSettings,
    MediaSettings,
    RegistrarConfig,
    ShutdownSettings,
    SipSettings,
    StorageSettings,
    TextSettings,
)
from ivr.settings.values import AgentName, Name
from queueing.model import ModelError


class ConfigError(Exception):
    """A configuration problem, already worded for the person who wrote the file."""


class Config(Strict):
    sip: SipSettings = SipSettings()
    media: MediaSettings = MediaSettings()
    http: HttpSettings = HttpSettings()
    storage: StorageSettings = StorageSettings()
    texts: TextSettings = TextSettings()
    admin: AdminSettings = AdminSettings()
    ivr: IvrSettings = IvrSettings()  # no flows: the built-in demo (ivr/settings/demo.yaml)
    registrar: RegistrarConfig = RegistrarConfig()
    agents: dict[AgentName, AgentSettings] = Field(default_factory=dict, description="SIP logins for agents' phones")
    queues: dict[Name, QueueSettings] = Field(
        default_factory=default_queues, min_length=1, description="queue name -> settings; default: one 'general'"
    )
    surge: SurgeSettings = SurgeSettings()
    callbacks: CallbackSettings = CallbackSettings()
    security: SecuritySettings = SecuritySettings()
    cluster: ClusterSettings = ClusterSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _queue_references(self) -> Config:
        groups = self.ivr.groups
        problems: list[Problem] = []
        for qname, queue in self.queues.items():
            refs: list[tuple[Loc, str]] = [
                (("tiers", i, "groups", j), g) for i, t in enumerate(queue.tiers) for j, g in enumerate(t.groups)
            ]
            refs += [(("urgent_groups", j), g) for j, g in enumerate(queue.urgent_groups)]
            for loc, group in refs:
                if group not in groups:
                    close = difflib.get_close_matches(group, list(groups), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    msg = f"unknown caller group {group!r}{hint}: define it under ivr.groups"
                    problems.append((("queues", qname, *loc), msg, group))
        # every queue and callback node of every flow names a queue (and a slot) that exists
        windows = {w.name for w in self.callbacks.windows} | {"asap"}
        for fname, flow in self.ivr.flows.items():
            for nid, node in flow.nodes.items():
                slot = getattr(node, "slot", None)
                if getattr(node, "type", None) == "callback" and slot not in windows:
                    own = "ivr" in self.model_fields_set
                    msg = f"unknown callback slot {slot!r}: asap or a window of callbacks.windows"
                    if not own:
                        msg = f"the built-in demo flow offers the slot {slot!r}: keep it in callbacks.windows"
                    where = ("ivr", "flows", fname, "nodes", nid, "slot") if own else ("callbacks",)
                    problems.append((where, msg, slot))
                wanted = getattr(node, "queue", None)
                if getattr(node, "type", None) in ("queue", "callback") and wanted not in self.queues:
                    known = ", ".join(sorted(self.queues))
                    if "ivr" not in self.model_fields_set:
                        msg = f"the built-in demo flow sends callers to queue {wanted!r}: define it, or write ivr.flows"
                        problems.append((("queues",), msg, wanted))
                        continue
                    msg = f"unknown queue {wanted!r}: define it under queues (queues now: {known})"
                    problems.append((("ivr", "flows", fname, "nodes", nid, "queue"), msg, wanted))
        if problems:
            raise_problems("Config", problems)
        # every rule of the queueing model holds once the fields pass; this catches any the fields missed
        try:
            queues.model_from_config(self)
        except ModelError as exc:
            raise_problems("Config", [(("queues",), str(exc), None)])
        return self

    @model_validator(mode="after")
    def _cluster_durable_store(self) -> Config:
        if self.cluster.enabled and not self.storage.url.startswith("postgresql+asyncpg://"):
            msg = "cluster mode keeps callbacks, texts, call records and audit in PostgreSQL shared by every node: "
            msg += "use postgresql+asyncpg://USER@HOST/DB"
            raise_problems("Config", [(("storage", "url"), msg, self.storage.url)])
        return self

    @model_validator(mode="after")
    def _supervisors_are_agents(self) -> Config:
        problems: list[Problem] = []
        for i, name in enumerate(self.callbacks.supervisors):
            if name not in self.agents:
                close = difflib.get_close_matches(name, list(self.agents), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                msg = f"unknown agent {name!r}{hint}: a supervisor logs in as an agent, define it under agents"
                problems.append((("callbacks", "supervisors", i), msg, name))
        if problems:
            raise_problems("Config", problems)
        return self


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = text_line(exc.object[: exc.start])
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x})") from None
    return parse_config(text, str(path))


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Validate the text of a config file; ``filename`` is what the error messages name."""
    node, data = read_yaml(text, filename, ConfigError)
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: the top level must be a mapping of sections (sip, http, ...)")
    try:
        # relative paths in the file (prompt recordings, group lists) are relative to the file
        return Config.model_validate(data, context={"config_dir": Path(filename).parent})
    except ValidationError as exc:
        raise ConfigError(explain(exc, node, filename)) from None
