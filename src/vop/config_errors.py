"""Config validation whose errors lead with the fix, and which fills in the schema's defaults.

`validate_config(config, schema_path)` replaces snakemake.utils.validate(config, schema_path) in the
Snakefile. On a bad config it raises `ConfigError` whose first line names the key path, what is
wrong and the closest valid key or value:

    methods.vop.prefiltr: unknown key; did you mean 'prefilter'?
      allowed here: type, k, encoder, prefilter, radius, tfidf, seed, ivf_min_images, ivf_nprobe, chunk_images

followed by at most a few lines of context (other problems, where the config comes from), instead of
the schema and instance dumps of jsonschema's messages.

Defaults are filled exactly as snakemake.utils.validate(set_default=True) does (snakemake 9): the
`properties` keyword is extended so that, wherever a `properties` is evaluated against an object, each
property whose own subschema has a `default` and is missing is set to it, before validation goes on
into the properties. Consequences the workflow relies on: a missing object with `default: {}` (labels,
pose, ...) is created and then filled with its own properties' defaults; properties of `then` branches
are filled when their `if` holds (methods of type vop get radius, tfidf, seed, chunk_images); a default
behind a `$ref` (ivf_min_images, ivf_nprobe) is not filled, since the subschema holding it is only the
$ref. Differences that do not change a valid config's result: defaults are deep copies (snakemake
shares the schema's objects), a non-object value gets no defaults (all errors are collected here, where
snakemake stops at the first, so the filling can meet one), and on error the config is left as it was.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

MAX_PROBLEMS = 3  # the first one and up to two more, then a count
_LIST_LIMIT = 12

_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping (key: value)", "null": "null"}
_TYPE_PLURAL = {"integer": "integers", "number": "numbers", "string": "strings", "boolean": "booleans",
                "array": "lists", "object": "mappings", "null": "nulls"}
_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(ValueError):
    """An invalid config. `path`: the keys to the first problem; str(): the problem first, then context."""

    def __init__(self, message: str, path: tuple = ()):
        super().__init__(message)
        self.path = path


# --- defaults, as snakemake.utils.validate sets them -----------------------------------------------

def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultsValidator = _with_defaults(Draft202012Validator)


def _load(path: str | Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _registry(schema: dict, uri: str) -> Registry:
    def retrieve(other: str) -> Resource:  # relative $refs to other schema files, as snakemake resolves them
        return Resource.from_contents(_load(url2pathname(urlparse(other).path)))

    return Registry(retrieve=retrieve).with_resource(uri, Resource.from_contents(schema))


# --- reading the schema around an error -----------------------------------------------------------

@dataclass
class _Place:
    """The schemas that may apply at one place of the config, with the condition of the then-branch each is in."""

    schemas: list[tuple[dict, str | None]] = field(default_factory=list)

    def names(self) -> dict[str, list[str | None]]:
        found: dict[str, list[str | None]] = {}
        for schema, condition in self.schemas:
            for name in schema.get("properties", {}) if isinstance(schema.get("properties"), dict) else ():
                found.setdefault(name, []).append(condition)
        return found


def _condition_key(if_schema) -> str | None:
    """The property an `if` of the form {properties: {key: ...}} tests."""
    if isinstance(if_schema, dict) and set(if_schema) == {"properties"} and len(if_schema["properties"]) == 1:
        return next(iter(if_schema["properties"]))
    return None


def _condition(if_schema) -> str | None:
    """'type: vop' for an `if` of the form {properties: {type: {const: vop}}}."""
    if not isinstance(if_schema, dict) or set(if_schema) != {"properties"} or len(if_schema["properties"]) != 1:
        return None
    (key, test), = if_schema["properties"].items()
    if isinstance(test, dict) and "const" in test:
        return f"{key}: {test['const']}"
    if isinstance(test, dict) and "enum" in test:
        return f"{key}: " + " or ".join(str(v) for v in test["enum"])
    return None


class _Schema:
    def __init__(self, root: dict, registry: Registry, uri: str):
        self.root, self.resolver = root, registry.resolver(base_uri=uri)

    def resolve(self, schema):
        """Follow $ref (a lone one, or one beside other keywords: those are dropped here)."""
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 20:
            schema, seen = self.resolver.lookup(schema["$ref"]).contents, seen + 1
        return schema

    def expand(self, schema, condition: str | None = None) -> Iterator[tuple[dict, str | None]]:
        """The schema and those applying with it (allOf/anyOf/oneOf, if/then/else, $ref), never the `if` itself."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return
        yield schema, condition
        for keyword in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(keyword, ()):
                yield from self.expand(sub, condition)
        if "then" in schema:
            yield from self.expand(schema["then"], _condition(schema.get("if")) or condition)
        if "else" in schema:
            yield from self.expand(schema["else"], condition)

    def place(self, path: Iterable) -> _Place:
        """Every schema that may apply to the value at `path` of the config."""
        current = list(self.expand(self.root))
        for key in path:
            children = []
            for schema, _ in current:
                if isinstance(key, int):
                    prefix = schema.get("prefixItems", [])
                    child = prefix[key] if key < len(prefix) else schema.get("items")
                    if child is not None:
                        children.append(child)
                    continue
                properties = schema.get("properties", {})
                if key in properties:
                    children.append(properties[key])
                    continue
                matched = [sub for pattern, sub in schema.get("patternProperties", {}).items()
                           if re.search(pattern, str(key))]
                children += matched
                if not matched and isinstance(schema.get("additionalProperties"), dict):
                    children.append(schema["additionalProperties"])
            current = [pair for child in children for pair in self.expand(child)]
        return _Place(current)

    def at(self, schema_path: Iterable) -> object:
        """The schema at an absolute schema path of an error (following $refs the path does not show)."""
        node = self.root
        for key in schema_path:
            node = self.resolve(node)
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    def describe(self, schema) -> str:
        """A short English description of what a schema accepts, for 'expected ...'."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return "any value" if schema is True else "nothing"
        if "const" in schema:
            return repr(schema["const"])
        if "enum" in schema:
            return "one of " + ", ".join(repr(v) for v in schema["enum"])
        if set(schema) - {"description"} == {"required"} and len(schema["required"]) == 1:
            return f"the key {schema['required'][0]!r}"
        types = schema.get("type")
        if types is None:
            return "another form"
        types = [types] if isinstance(types, str) else list(types)
        text = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        if types == ["array"] and isinstance(schema.get("items"), dict):
            item = self.describe(schema["items"])
            for singular, plural in _TYPE_PLURAL.items():
                item = re.sub(rf"^an? {singular}\b", plural, item)
            text = f"a list of {item}"
        bounds = [f"{sign} {schema[k]}" for k, sign in _BOUNDS if k in schema]
        return text + (" " + " and ".join(bounds) if bounds else "")


# --- one problem per error ------------------------------------------------------------------------

def key_path(path: Iterable) -> str:
    """methods.vop.k, datasets.demo.scenes[1], datasets['my data']; 'config' for the top level."""
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        elif isinstance(key, str) and _PLAIN_KEY.match(key):
            text += f".{key}" if text else key
        else:
            text += f"[{key!r}]"
    return text or "config"


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _json_type(value) -> str:
    for kind, types in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                        ("array", list), ("object", dict)):
        if isinstance(value, types):
            return kind
    return "null" if value is None else type(value).__name__


def _closest(word, options: Iterable) -> str | None:
    options = [str(o) for o in options]
    matches = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _listing(names: Iterable) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:_LIST_LIMIT]) + (f", ... ({len(names)} in all)" if len(names) > _LIST_LIMIT else "")


@dataclass
class _Problem:
    path: tuple
    line: str
    rank: int  # 0: a typo with a suggestion ... 5: a composite error
    context: list[str] = field(default_factory=list)
    suggests: str | None = None  # the key suggested for a typo (a "missing" error for it is the same problem)
    missing: str | None = None
    # From a then-branch that applies only because the key its `if` tests is absent (JSON Schema: an `if`
    # on a missing property holds), e.g. every method branch when `type` is misspelt: that key.
    vacuous: str | None = None


class _Explainer:
    def __init__(self, schema: _Schema):
        self.schema = schema

    def problems(self, error: ValidationError) -> list[_Problem]:
        path = tuple(error.absolute_path)
        schema_path = list(error.absolute_schema_path)
        is_name = any(k == "propertyNames" and (i == 0 or schema_path[i - 1] != "properties")
                      for i, k in enumerate(schema_path))
        if is_name:
            path += (error.instance,)
        handler = getattr(self, f"_{error.validator}", None)
        found = handler(error, path, is_name) if handler is not None else None
        if found is None:
            found = [self._generic(error, path, is_name)]
        vacuous = self._vacuous(error)
        for problem in found:
            problem.vacuous = problem.vacuous or vacuous
        return found

    def _vacuous(self, error: ValidationError) -> str | None:
        """The key tested by the `if` of the then-branch this error comes from, when the object lacks it."""
        schema_path = list(error.absolute_schema_path)
        if len(schema_path) < 2 or schema_path[-2] != "then" or not isinstance(error.instance, dict):
            return None
        parent = self.schema.at(schema_path[:-2])
        key = _condition_key(parent.get("if")) if isinstance(parent, dict) else None
        return key if key is not None and key not in error.instance else None

    def _description(self, error: ValidationError) -> list[str]:
        text = error.schema.get("description") if isinstance(error.schema, dict) else None
        if not text:
            return []
        text = " ".join(str(text).split())
        if len(text) > 110:
            text = text[:110].rsplit(" ", 1)[0] + " ..."
        return [f"  about it: {text}"]

    def _additionalProperties(self, error, path, is_name):
        if error.validator_value is not False or not isinstance(error.instance, dict):
            return None
        properties = error.schema.get("properties", {})
        patterns = "|".join(error.schema.get("patternProperties", {}))
        extras = [k for k in error.instance if k not in properties and not (patterns and re.search(patterns, str(k)))]
        everywhere = self.schema.place(path).names()
        here = list(everywhere if self._vacuous(error) else properties)
        problems = []
        for extra in extras:
            where = key_path(path + (extra,))
            suggestion = _closest(extra, here)
            conditions: list = []
            if suggestion is None:
                suggestion = _closest(extra, everywhere)
                found = everywhere.get(suggestion, [])
                conditions = [] if None in found else found  # allowed somewhere unconditionally: no "only with"
            only = f" (only with {' or '.join(dict.fromkeys(conditions))})" if conditions else ""
            allowed = f"allowed here: {_listing(here)}" if here else "no keys are allowed here"
            if suggestion == extra:
                problems.append(_Problem(path + (extra,), f"{where}: not allowed here{only}; {allowed}", 0))
            elif suggestion:
                problems.append(_Problem(path + (extra,), f"{where}: unknown key; did you mean {suggestion!r}?{only}",
                                         0, [f"  {allowed}"], suggests=suggestion))
            else:
                problems.append(_Problem(path + (extra,), f"{where}: unknown key; {allowed}", 3))
        return problems

    def _required(self, error, path, is_name):
        if not isinstance(error.instance, dict):
            return None
        condition = None
        schema_path = list(error.absolute_schema_path)
        if "then" in schema_path:
            branch = len(schema_path) - 1 - schema_path[::-1].index("then")
            parent = self.schema.at(schema_path[:branch])
            condition = _condition(parent.get("if")) if isinstance(parent, dict) else None
        problems = []
        for key in error.validator_value:
            if key in error.instance:
                continue
            why = f"required with {condition}" if condition else "this key is required"
            has = f"  {key_path(path)} has: {_listing(error.instance)}" if error.instance else ""
            problems.append(_Problem(path + (key,), f"{key_path(path + (key,))}: missing; {why}", 4,
                                     [has] if has else [], missing=key))
        return problems

    def _enum(self, error, path, is_name, allowed=None):
        allowed = error.validator_value if allowed is None else allowed
        where = key_path(path)
        suggestion = _closest(error.instance, allowed)
        what = "unknown name" if is_name else f"{_short(error.instance)} is not allowed"
        if suggestion is not None:
            return [_Problem(path, f"{where}: {what}; did you mean {suggestion!r}?", 1,
                             [f"  allowed: {_listing(allowed)}"] + self._description(error))]
        return [_Problem(path, f"{where}: {what}; expected one of: {_listing(allowed)}", 1, self._description(error))]

    def _minProperties(self, error, path, is_name):
        n = error.validator_value
        return [_Problem(path, f"{key_path(path)}: needs at least {n} {'entry' if n == 1 else 'entries'}", 1,
                         self._description(error))]

    def _minItems(self, error, path, is_name):
        n = error.validator_value
        return [_Problem(path, f"{key_path(path)}: needs at least {n} {'item' if n == 1 else 'items'}", 1,
                         self._description(error))]

    def _const(self, error, path, is_name):
        return self._enum(error, path, is_name, [error.validator_value])

    def _type(self, error, path, is_name):
        expected = [error.validator_value] if isinstance(error.validator_value, str) else list(error.validator_value)
        got, value = _json_type(error.instance), error.instance
        shown = "" if value is None or isinstance(value, (dict, list)) else f" ({_short(value)})"
        line = (f"{key_path(path)}: expected {' or '.join(_TYPE_WORDS.get(t, t) for t in expected)}, "
                f"got {_TYPE_WORDS.get(got, got)}{shown}")
        return [_Problem(path, line + _type_hint(expected, value), 1, self._description(error))]

    def _pattern(self, error, path, is_name):
        what = "the name" if is_name else _short(error.instance)
        return [_Problem(path, f"{key_path(path)}: {what} does not match {error.validator_value!r}", 1,
                         self._description(error))]

    def _oneOf(self, error, path, is_name):
        branches = error.validator_value
        keys = [b["required"][0] for b in map(self.schema.resolve, branches)
                if isinstance(b, dict) and set(b) == {"required"} and len(b["required"]) == 1]
        alternatives = " or ".join(repr(k) for k in keys)
        if not error.context:  # valid under several branches
            if len(keys) == len(branches):
                return [_Problem(path, f"{key_path(path)}: give only one of the keys {alternatives}", 2)]
            return [_Problem(path, f"{key_path(path)}: {_short(error.instance)} matches more than one of: "
                                   + "; ".join(self.schema.describe(b) for b in branches), 2)]
        if len(keys) == len(branches):
            return [_Problem(path, f"{key_path(path)}: needs one of the keys {alternatives}", 2)]
        # The branch the value was meant for: the only one whose type it has. Explain its errors instead.
        by_branch: dict[int, list[ValidationError]] = {}
        for sub in error.context:
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [i for i, subs in by_branch.items()
                   if not any(s.validator == "type" and not s.relative_path for s in subs)]
        fitting += [i for i in range(len(branches)) if i not in by_branch]
        if len(fitting) == 1 and fitting[0] in by_branch and not any(
                s.validator in ("const", "enum") for s in by_branch[fitting[0]]):
            return [p for sub in by_branch[fitting[0]] for p in self.problems(sub)]
        options = [v for b in map(self.schema.resolve, branches) if isinstance(b, dict)
                   for v in ([b["const"]] if "const" in b else b.get("enum", []))]
        suggestion = _closest(error.instance, options) if isinstance(error.instance, str) else None
        line = (f"{key_path(path)}: {_short(error.instance)} is not valid; expected "
                + " or ".join(self.schema.describe(b) for b in branches))
        return [_Problem(path, line + (f"; did you mean {suggestion!r}?" if suggestion else ""), 1,
                         self._description(error))]

    _anyOf = _oneOf

    def _generic(self, error, path, is_name) -> _Problem:
        message = error.message
        if len(message) > 160 or "\n" in message:  # jsonschema quotes the whole instance: say less
            message = f"{_short(error.instance)} fails the schema's {error.validator!r} rule"
            message += f" ({_short(error.validator_value)})"
        rank = 5 if error.validator in ("allOf", "not", "if", "then", "else", "dependentSchemas") else 1
        return _Problem(path, f"{key_path(path)}: {message}", rank, self._description(error))


def _type_hint(expected: list[str], value) -> str:
    """The edit that turns a wrongly typed YAML value into the expected one, when it is clear."""
    if isinstance(value, str):
        for kind, parse in (("integer", int), ("number", float)):
            if kind in expected:
                try:
                    parse(value)
                    return f"; write {value} without quotes"
                except ValueError:
                    pass
        if "boolean" in expected and value.lower() in ("true", "false"):
            return f"; write {value.lower()} without quotes"
    if "array" in expected and not isinstance(value, (list, dict)):
        return f"; write it as a list: [{value}]"
    if "string" in expected and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "; put it in quotes so that YAML reads it as text (e.g. '0015', not 0015)"
    return ""


def _report(problems: list[_Problem], source: str | None) -> tuple[str, tuple]:
    fixed = {(p.path[:-1], p.suggests) for p in problems if p.suggests}
    problems = [p for p in problems if not (p.missing and (p.path[:-1], p.missing) in fixed)]
    # With the key that selects a branch misspelt or missing, that is the problem, not the branches' errors.
    named = fixed | {(p.path[:-1], p.missing) for p in problems if p.missing}
    problems = [p for p in problems
                if not (p.vacuous and p.suggests != p.vacuous and (p.path[:-1], p.vacuous) in named)] or problems
    unique: dict[str, _Problem] = {}
    for problem in problems:
        unique.setdefault(problem.line, problem)
    ordered = sorted(unique.values(), key=lambda p: (p.rank, -len(p.path)))
    first, others = ordered[0], ordered[1:]
    lines = [first.line] + [c for c in first.context if c][:2]
    lines += [f"  also: {p.line}" for p in others[: MAX_PROBLEMS - 1]]
    if len(others) > MAX_PROBLEMS - 1:
        lines.append(f"  ... and {len(others) - MAX_PROBLEMS + 1} more problem(s)")
    if source:
        lines.append(f"  (in {source})")
    return "\n".join(lines), first.path


def validate_config(config: dict, schema_path: str | Path, *, source: str | None = None) -> None:
    """Check `config` against the JSON schema (YAML or JSON file) and fill in its defaults, in place.

    Raises ConfigError (first line: key path, problem, closest valid key or value), leaving `config` as
    it was. `source` (e.g. "config/config.yaml") is named on the last line of the message.
    """
    schema_path = Path(schema_path)
    schema = _load(schema_path)
    uri = schema_path.resolve().as_uri()
    schema["$id"] = uri  # relative $refs resolve against the schema file, as snakemake does
    registry = _registry(schema, uri)
    original = copy.deepcopy(config)
    if not any(True for _ in _DefaultsValidator(schema, registry=registry).iter_errors(config)):
        return
    if isinstance(config, dict):  # left as it was: the defaults filled so far would show in "has: ..." lines
        config.clear()
        config.update(original)
    errors = list(Draft202012Validator(schema, registry=registry).iter_errors(config))
    explainer = _Explainer(_Schema(schema, registry, uri))
    message, path = _report([p for e in errors for p in explainer.problems(e)], source)
    raise ConfigError(message, path)
