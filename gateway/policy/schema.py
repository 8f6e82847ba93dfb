"""The nudge policy file: a versioned, documented schema.

A policy file is YAML::

    version: 1
    default:            # applies to every request
      reasoning: {...}
      right_sizing: {...}
      ...
    sections:           # named overrides, chosen per API key or team
      ml-lab:
        reasoning: {allow: true, max_tokens: 8192}

**Which section applies.** A key's ``policy`` (gateway config) names its section; without
one, the section named like the key's team; without that, ``default``.

**Merge rule.** A section deep-merges over ``default``: mappings merge key by key (so a
section can change one message template, one cap tier or add one alias), while scalars and
lists replace (a section's ``budgets`` list replaces the default's whole list; ``[]`` removes
them). Every section is validated on its own (so errors point into it) and again merged.

Unknown keys are errors everywhere: a typo must not silently do nothing. Field descriptions
below end up in ``policies/policy.schema.json`` for editor completion; regenerate it with
``python -m gateway.policy.schema > policies/policy.schema.json``.
"""

from __future__ import annotations

import difflib
import json
import string
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.yamlfile import YamlDocument, YamlFileError, doc_has_key, format_loc

SCHEMA_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- reasoning


class ReasoningPolicy(Strict):
    """Reasoning ("thinking") costs ~30x the energy of a direct answer: off unless asked for.

    A client opts in with a ``reasoning_effort`` value other than ``none`` (or Qwen's
    ``chat_template_kwargs.enable_thinking: true``) or with the header
    ``x-gateway-reasoning: on``. The gateway then sends each model family the switch that
    really turns thinking on or off.
    """

    on_by_default: bool = Field(
        False, description="reason even when the client does not ask (not recommended: the costliest mode)"
    )
    allow: bool = Field(True, description="whether a client may opt in at all; false keeps reasoning off")
    allow_keys: tuple[str, ...] | None = Field(
        None, description="if set (with or without allow_teams), only these key names may opt in"
    )
    allow_teams: tuple[str, ...] | None = Field(
        None, description="if set, only these teams may opt in (a key in allow_keys may too)"
    )
    require_header: bool = Field(
        False,
        description="opting in needs the header 'x-gateway-reasoning: on'; "
        "a reasoning_effort in the body alone is not enough",
    )
    max_tokens: int | None = Field(
        4096, gt=0, description="cap on max_tokens for answers that reason (thinking included); null = tier caps only"
    )
    default_effort: Literal["low", "medium", "high"] = Field(
        "medium", description="effort sent to effort-only models (gpt-oss) when the opt-in names no level"
    )
    always_thinking: Literal["reroute", "warn", "allow"] = Field(
        "reroute",
        description=(
            "models that always think (DeepSeek-R1 distills, QwQ) when reasoning is off: reroute = ask the router for "
            "a non-reasoning model of similar size and warn if none is served; warn = serve and warn; "
            "allow = serve silently"
        ),
    )


# ---------------------------------------------------------------- right-sizing


class RightSizingPolicy(Strict):
    """Route to the smallest adequate model unless the client really wants a large one."""

    default_model: str = Field(
        "auto", min_length=1, description="model used when the client sends none: 'auto', 'tier:NAME' or a model name"
    )
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="client-facing model names -> 'auto', 'tier:NAME' or a served model name (e.g. fast: tier:small)",
    )
    large_tiers: tuple[str, ...] = Field(
        ("large",), description="tiers that count as large (for explicit_large and the large-tier feedback)"
    )
    explicit_large: Literal["allow", "warn", "friction"] = Field(
        "warn",
        description=(
            "when a client names a large model: allow; warn = serve it and name the smaller model the router would "
            "pick with its predicted adequacy; friction = serve the router's pick unless the override header is sent"
        ),
    )
    override_header: str = Field(
        "x-gateway-override",
        pattern=r"^[a-z0-9-]+$",
        description="request header (lower case) that insists on the named large model under friction; "
        "value 1/true/yes/on",
    )


# ---------------------------------------------------------------- feedback and cost


class FeedbackPolicy(Strict):
    """After each answer, warn when a threshold is crossed (header x-gateway-nudge and the nudges array)."""

    enabled: bool = Field(True, description="add feedback nudges at all")
    large_tier: bool = Field(True, description="warn when a large tier answered")
    reasoning: bool = Field(True, description="warn when reasoning ran")
    wh_above: float | None = Field(
        0.5, ge=0, description="warn when one answer used more than this many Wh; null = never"
    )
    completion_tokens_above: int | None = Field(
        2000, gt=0, description="warn when an answer is longer than this many tokens; null = never"
    )


class CostPolicy(Strict):
    """Money next to energy. Prices per backend ($/GPU-hour, $/kWh) are in the gateway config."""

    show: bool = Field(True, description="show each request's cost to the caller")
    cloud_model: str | None = Field(
        None,
        description="compare with what the same tokens would cost on this cloud model "
        "(a name from litellm's price map, e.g. gpt-4o); null = no comparison",
    )


# ---------------------------------------------------------------- budgets


class Budget(Strict):
    """A budget per key or team and period, in Wh, tokens, requests or US dollars."""

    scope: Literal["key", "team"] = Field(description="count per API key (by its configured name) or per team")
    period: Literal["day", "week", "month"] = Field(description="calendar period in UTC; weeks start on Monday")
    unit: Literal["wh", "tokens", "requests", "usd"] = Field(description="what is counted")
    limit: float = Field(gt=0, description="hard limit per period")
    soft_limit_pct: float | None = Field(
        80, gt=0, le=100, description="warn once usage reaches this share of the limit (percent); null = no warning"
    )
    on_exceed: Literal["downgrade", "reasoning_off", "refuse"] = Field(
        "refuse",
        description="at the hard limit: downgrade = route no higher than downgrade_to; reasoning_off; "
        "refuse = 429 until the period resets",
    )
    downgrade_to: str = Field(
        "small", min_length=1, description="highest tier allowed once a downgrade budget is spent"
    )


# ---------------------------------------------------------------- caps


class TierCaps(Strict):
    default_max_tokens: int | None = Field(
        None, gt=0, description="max_tokens when the client sends none; null = the general default"
    )
    max_tokens: int | None = Field(
        None, gt=0, description="larger client values are lowered to this; null = the general maximum"
    )


CostlyOption = Literal["logprobs", "top_logprobs", "prompt_logprobs", "best_of", "n", "use_beam_search"]


class CapsPolicy(Strict):
    """Sensible limits. vLLM without max_tokens generates up to the whole context; the gateway never sends that."""

    default_max_tokens: int = Field(
        1024, gt=0, description="max_tokens when the client sends none (a default above max_tokens is lowered to it)"
    )
    max_tokens: int | None = Field(8192, gt=0, description="larger client values are lowered to this; null = no cap")
    tiers: dict[str, TierCaps] = Field(default_factory=dict, description="per-tier overrides of the two caps above")
    n_default: int = Field(1, ge=1, description="choices per request when the client sends no n")
    n_max: int | None = Field(None, ge=1, description="larger n are lowered to this; null = no cap")
    strip_options: tuple[CostlyOption, ...] = Field(
        (), description="costly options removed from requests ('n' lowers n to 1), with an explanation header"
    )


# ---------------------------------------------------------------- social proof


class SocialProofPolicy(Strict):
    """Compare a key's energy per request with its team's median (kept in memory, per gateway)."""

    enabled: bool = Field(False, description="off by default: comparisons can feel like judgement")
    window: int = Field(500, ge=10, description="recent requests per team kept for the median")
    min_samples: int = Field(
        20, ge=2, description="say nothing until the key and the team both have this many requests"
    )
    ratio_above: float = Field(1.5, gt=1, description="warn when the key's mean is this many times the team median")


# ---------------------------------------------------------------- deferral


class DeferralPolicy(Strict):
    """Work that is not urgent runs when the GPUs have room, in fuller batches: service_tier "flex"
    (waits for room, api/flex.py) and the Batch API. Fuller batches cost less energy per token."""

    default_tier: Literal["default", "flex"] = Field(
        "default",
        description="tier of chat and completions requests that name none (or 'auto'): flex defers them; "
        "a request still opts out with service_tier 'default'",
    )
    budget_discount: float = Field(
        0.0, ge=0, lt=1, description="share of flex and batch usage not counted against budgets (0.5: half counts)"
    )
    suggest: bool = Field(True, description="suggest flex or the Batch API to keys that send offline-looking work")
    suggest_after: int = Field(
        20, ge=1, description="suggest once a key sent this many such requests within suggest_window_s"
    )
    suggest_window_s: float = Field(600.0, gt=0, description="seconds over which such requests are counted")
    suggest_max_tokens: int = Field(
        1024, ge=1, description="such a request does not stream and asks for at least this many max_tokens"
    )


# ---------------------------------------------------------------- messages

# Placeholders each message may use. Values arrive pre-rounded as text, so a placeholder
# takes no format spec: "{wh} Wh", not "{wh:.2f} Wh".
_ANSWER = {"model", "tier", "wh", "co2e_g", "usd", "prompt_tokens", "completion_tokens", "requested_model"}
_BUDGET = {"scope", "name", "unit", "period", "limit", "used", "pct", "resets_in", "action"}
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "reasoning_refused": frozenset({"why", "header"}),
    "always_thinking": frozenset({"model", "tier"}),
    "large_model": frozenset({"model", "tier", "smaller_model", "adequacy"}),
    "friction": frozenset({"model", "requested_model", "header", "adequacy"}),
    "capped": frozenset({"max_tokens", "requested", "why"}),
    "stripped": frozenset({"options"}),
    "reasoning_on": frozenset(_ANSWER),
    "large_tier": frozenset(_ANSWER | {"smaller_model"}),
    "energy": frozenset(_ANSWER | {"wh_threshold"}),
    "long_answer": frozenset(_ANSWER | {"tokens_threshold"}),
    "cost": frozenset(_ANSWER | {"cloud_model", "cloud_usd"}),
    "budget_soft": frozenset(_BUDGET),
    "budget_hard": frozenset(_BUDGET),
    "budget_refused": frozenset(_BUDGET),
    "social": frozenset({"key_wh", "team_median_wh", "ratio", "team"}),
    "deferrable": frozenset({"count", "window", "max_tokens"}),
}


class Template(Strict):
    message: str = Field(min_length=1, description="short, factual text; {placeholders} are filled in")
    hint: str | None = Field(None, description="how to save (the nudge's saving_hint); may use the same placeholders")


def _t(message: str, hint: str | None = None) -> Template:
    return Template(message=message, hint=hint)


_WHEN = {
    "reasoning_refused": "a client asked for reasoning and the policy does not allow it",
    "always_thinking": "reasoning is off but the served model always thinks",
    "large_model": "a client named a large model (explicit_large: warn)",
    "friction": "a named large model was replaced by the router's pick (explicit_large: friction)",
    "capped": "max_tokens was lowered by a cap",
    "stripped": "costly options were removed (caps.strip_options)",
    "reasoning_on": "reasoning ran (feedback.reasoning)",
    "large_tier": "a large tier answered (feedback.large_tier)",
    "energy": "an answer used more than feedback.wh_above Wh",
    "long_answer": "an answer was longer than feedback.completion_tokens_above tokens",
    "cost": "cost.cloud_model is set: the cloud comparison",
    "budget_soft": "a budget passed its soft limit",
    "budget_hard": "a budget's hard limit downgraded the request or turned reasoning off",
    "budget_refused": "a budget's hard limit refused the request (the 429's message)",
    "social": "the key's energy per request is well above its team's median (social_proof)",
    "deferrable": "a key keeps sending work that looks offline (deferral.suggest)",
}


def _describe_messages(schema: dict[str, Any]) -> None:
    for name, prop in schema.get("properties", {}).items():
        fields = ", ".join(f"{{{f}}}" for f in sorted(TEMPLATE_FIELDS[name]))
        prop["description"] = f"shown when {_WHEN[name]}; placeholders: {fields}"


class Messages(Strict):
    """Message templates, one per nudge: short and factual, numbers filled in."""

    model_config = ConfigDict(json_schema_extra=_describe_messages)

    reasoning_refused: Template = _t("Reasoning stays off: {why}.", "Ask the operator if you need reasoning.")
    always_thinking: Template = _t(
        "{model} always reasons and no similar non-reasoning model is served.", "Use model auto for direct answers."
    )
    large_model: Template = _t(
        "You asked for {model}; {smaller_model} would likely do ({adequacy} predicted adequacy).",
        "Send model auto to let the gateway pick the smallest adequate model.",
    )
    friction: Template = _t(
        "Served {model} instead of {requested_model}; large models need the header {header}.",
        "Send '{header}: 1' to insist on {requested_model}.",
    )
    capped: Template = _t("max_tokens lowered from {requested} to {max_tokens} ({why}).")
    stripped: Template = _t("Removed costly options: {options}.")
    reasoning_on: Template = _t(
        "Reasoning was on: {wh} Wh for {completion_tokens} tokens.",
        "Reasoning answers use up to ~30x the energy of direct ones; opt in only when needed.",
    )
    large_tier: Template = _t(
        "Answered by the large model {model}: {wh} Wh, {co2e_g} g CO2e.", "Use model auto for routine requests."
    )
    energy: Template = _t("This answer used {wh} Wh ({co2e_g} g CO2e) on {model}.")
    long_answer: Template = _t("Long answer: {completion_tokens} tokens, {wh} Wh.", "Set max_tokens to what you need.")
    cost: Template = _t("Cost {usd} here; the same tokens on {cloud_model} would cost {cloud_usd}.")
    budget_soft: Template = _t(
        "{scope} {name} has used {pct} of its {period} budget ({used} of {limit} {unit}).", "Resets in {resets_in}."
    )
    budget_hard: Template = _t(
        "{scope} {name} is over its {period} {unit} budget: {action} until it resets in {resets_in}."
    )
    budget_refused: Template = _t(
        "{scope} {name} has used its {period} budget of {limit} {unit}; it resets in {resets_in}."
    )
    social: Template = _t(
        "Your requests use {key_wh} Wh on average, {ratio}x the median of team {team} ({team_median_wh} Wh).",
        "Smaller models, shorter answers and reasoning off cut this most.",
    )
    deferrable: Template = _t(
        "{count} requests from this key in the last {window} asked for {max_tokens}+ tokens without streaming.",
        "If they can wait, send them with service_tier 'flex' or through the Batch API (/v1/batches): "
        "they run when the GPUs have room, in fuller batches, at less energy per token.",
    )

    @field_validator("*")
    @classmethod
    def _placeholders(cls, value: Template, info: pydantic.ValidationInfo) -> Template:
        allowed = TEMPLATE_FIELDS[info.field_name or ""]
        for part, text in (("message", value.message), ("hint", value.hint)):
            if text is None:
                continue
            try:
                fields = list(string.Formatter().parse(text))
            except ValueError as exc:
                raise ValueError(f"{part}: {exc} (write {{{{ and }}}} for literal braces)") from None
            for _, name, spec, conversion in fields:
                if name is None:
                    continue
                if name not in allowed:
                    raise ValueError(
                        f"{part}: unknown placeholder {{{name}}}; expected one of {', '.join(sorted(allowed))}"
                    )
                if spec or conversion:
                    raise ValueError(f"{part}: placeholder {{{name}}} takes no format spec (values come rounded)")
        return value


# ---------------------------------------------------------------- the policy and the file


class Policy(Strict):
    """One policy: the default, or a section merged over it."""

    reasoning: ReasoningPolicy = Field(default_factory=ReasoningPolicy)
    right_sizing: RightSizingPolicy = Field(default_factory=RightSizingPolicy)
    feedback: FeedbackPolicy = Field(default_factory=FeedbackPolicy)
    cost: CostPolicy = Field(default_factory=CostPolicy)
    budgets: tuple[Budget, ...] = Field(
        (), description="budgets for this policy; a section's list replaces the default's"
    )
    caps: CapsPolicy = Field(default_factory=CapsPolicy)
    social_proof: SocialProofPolicy = Field(default_factory=SocialProofPolicy)
    deferral: DeferralPolicy = Field(default_factory=DeferralPolicy)
    messages: Messages = Field(default_factory=Messages)
    explain: bool = Field(
        True, description="add explanation headers (x-gateway-reasoning, x-gateway-caps, x-gateway-nudge)"
    )


class PolicyFile(Strict):
    """A nudge policy file for Nudge Gateway."""

    version: Literal[1] = Field(description="schema version of this file; this gateway reads version 1")
    default: Policy = Field(
        default_factory=Policy, description="the policy every request gets unless a section applies"
    )
    sections: dict[str, Policy] = Field(
        default_factory=dict,
        description="named overrides, deep-merged over default; picked by the key's 'policy' or by the team name",
    )

    @field_validator("sections")
    @classmethod
    def _names(cls, sections: dict[str, Policy]) -> dict[str, Policy]:
        if "default" in sections:
            raise ValueError("'default' is the top-level policy; name the section something else")
        if any(not name for name in sections):
            raise ValueError("section names must not be empty")
        return sections


# ---------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; everything else (scalars, lists) in ``over`` replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class LoadedPolicy:
    file: PolicyFile
    policies: dict[str, Policy]  # "default" and every section, merged


def load_policy(doc: YamlDocument) -> LoadedPolicy:
    """Validate a parsed policy file and merge its sections; raise YamlFileError with positions."""
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise YamlFileError(
            doc.path, [f"{doc.path}:1:1: expected a mapping at the top level (version, default, sections)"]
        )
    try:
        file = PolicyFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise YamlFileError(doc.path, problems(doc, exc)) from None
    base = file.default.model_dump()
    policies = {"default": file.default}
    errors: list[str] = []
    for name, section in file.sections.items():
        try:
            policies[name] = Policy.model_validate(deep_merge(base, section.model_dump(exclude_unset=True)))
        except pydantic.ValidationError as exc:  # only if a future cross-field rule rejects the merge
            errors += problems(doc, exc, prefix=("sections", name))
    if errors:
        raise YamlFileError(doc.path, errors)
    return LoadedPolicy(file=file, policies=policies)


def problems(doc: YamlDocument, error: pydantic.ValidationError, prefix: tuple = ()) -> list[str]:
    """``file:line:col: field: message`` per error (in file order), saying what was expected."""
    found = []
    for err in error.errors(include_url=False):
        raw = prefix + tuple(err["loc"])
        loc = tuple(p for p in raw if isinstance(p, int) or doc_has_key(doc, p))
        line, col = doc.position(loc)
        msg = err["msg"].removeprefix("Value error, ")
        got = ""
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(
            err.get("input"), (dict, list, type(None))
        ):
            got = f" (got {err['input']!r})"
        if err["type"] == "missing":
            loc = loc + (raw[-1],) if loc != raw else loc
            msg = "required field is missing"
            if raw == ("version",):
                msg = f"missing 'version: {SCHEMA_VERSION}' at the top of the file"
        elif err["type"] == "extra_forbidden":
            allowed = _fields_at(raw[:-1])
            if allowed:
                guess = difflib.get_close_matches(str(raw[-1]), allowed, n=1)
                msg = "unknown key" + (f" (did you mean {guess[0]!r}?)" if guess else "")
                msg += f"; expected one of: {', '.join(allowed)}"
        elif err["type"] == "literal_error" and raw == ("version",):
            msg = f"unsupported policy version; this gateway reads version {SCHEMA_VERSION}"
        found.append((line, col, f"{doc.path}:{line}:{col}: {format_loc(loc)}: {msg}{got}"))
    return [text for _, _, text in sorted(found, key=lambda f: (f[0], f[1]))]


def _fields_at(loc: tuple) -> list[str]:
    """The field names the model at ``loc`` (inside PolicyFile) accepts; [] if not a model."""
    tp: Any = PolicyFile
    for part in loc:
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = tp.model_fields.get(part)
            if field is None:
                return []
            tp = field.annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (tuple, list) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        else:
            return []
    tp = _strip_optional(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def json_schema() -> dict[str, Any]:
    schema = PolicyFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "Nudge Gateway policy"}


def render_json_schema() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_json_schema())
