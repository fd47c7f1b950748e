"""The fused-model cache and the fuse verdict, without mlx (pure parts of adapters/fuse and launch/fuse)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from punie.adapters.canary import Canary, TopToken
from punie.adapters.fuse import (
    INDEX_FILE,
    MANIFEST_FILE,
    FuseCheckRecord,
    FusedManifest,
    FuseSpec,
    adapter_content_hash,
    canary_digest,
    commit,
    entry_dir,
    entry_lock,
    file_digests,
    fuse_key,
    integrity_problem,
    new_work_dir,
    read_manifest,
    write_manifest,
)
from punie.config.models import FuseOptions, Profile
from punie.errors import ConfigError, CorruptFileError
from punie.launch.canary import MATCH_TOLERANCE
from punie.launch.fuse import judge_fused, refusal
from punie.paths import fused_models_dir


def _top(pairs: list[tuple[int, float]]) -> list[TopToken]:
    return [TopToken(id=i, token=f"t{i}", text=f"t{i}", logprob=lp) for i, lp in pairs]


CANARY = Canary(prompt="p", base=_top([(1, -0.5), (2, -1.5), (3, -2.0)]),
                adapter=_top([(2, -0.4), (1, -1.6), (4, -2.5)]))


def test_fuse_options_validate_bits_and_group_size() -> None:
    assert FuseOptions().enabled is False and FuseOptions().bits is None
    assert FuseOptions(bits="base").bits == "base"
    assert FuseOptions(bits=4, group_size=32).group_size == 32
    for bad in ({"bits": 7}, {"bits": "dense"}, {"group_size": 48}, {"enable": True}):
        with pytest.raises(ValidationError):
            FuseOptions(**bad)
    with pytest.raises(ConfigError, match="group_size applies only with bits"):
        FuseSpec.of(FuseOptions(group_size=32), where="profiles.x.fuse")
    assert Profile.model_validate({"fuse": {"enabled": True}}).fuse.enabled


def test_spec_arguments_and_description() -> None:
    assert FuseSpec().child_args() == ["--dequantize"]
    assert FuseSpec(bits="base").child_args() == ["--keep-quantization"]
    assert FuseSpec(bits=4, group_size=32, dtype="float16").child_args() == [
        "--bits", "4", "--group-size", "32", "--dtype", "float16"]
    assert "dense" in FuseSpec().describe() and "4 bits, group 64" in FuseSpec(bits=4).describe()


def test_the_key_changes_with_each_input() -> None:
    base = fuse_key("w", "a", FuseSpec())
    others = {fuse_key("w2", "a", FuseSpec()), fuse_key("w", "a2", FuseSpec()), fuse_key("w", "a", FuseSpec(bits=4)),
              fuse_key("w", "a", FuseSpec(dtype="float16")), fuse_key("w", "a", FuseSpec(bits=4, group_size=32))}
    assert base not in others and len(others) == 5
    assert base == fuse_key("w", "a", FuseSpec())
    assert entry_dir(base).parent == fused_models_dir()


def test_adapter_hash_is_its_config_and_weights_not_its_metadata(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapters.safetensors").write_bytes(b"x" * 10)
    first = adapter_content_hash(tmp_path)
    (tmp_path / "punie-adapter.json").write_text('{"score": 0.5}')  # an eval score does not change the weights
    assert adapter_content_hash(tmp_path) == first
    (tmp_path / "adapters.safetensors").write_bytes(b"y" * 10)
    assert adapter_content_hash(tmp_path) != first
    (tmp_path / "adapters.safetensors").unlink()
    with pytest.raises(Exception, match="no adapters.safetensors"):
        adapter_content_hash(tmp_path)


def _entry(root: Path) -> tuple[Path, FusedManifest]:
    entry = root / "entry"
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(os.urandom(4096))
    (entry / INDEX_FILE).write_text(json.dumps({"weight_map": {"a": "model.safetensors"}}))
    (entry / "config.json").write_text("{}")
    check = FuseCheckRecord(canary=canary_digest(CANARY), top=CANARY.adapter, verdict="adapter-active",
                            distance_to_adapter=0.0, distance_to_base=1.1, separation=1.1)
    manifest = FusedManifest(key="k", base_model="b", base_weights="w", adapter="a", adapter_hash="h",
                             spec=FuseSpec(), created="now", files=file_digests(entry), check=check)
    write_manifest(entry, manifest)
    return entry, manifest


def test_integrity_finds_every_kind_of_damage(tmp_path: Path) -> None:
    entry, manifest = _entry(tmp_path)
    assert read_manifest(entry) == manifest
    assert integrity_problem(entry, manifest) is None
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[2000] ^= 1
    weights.write_bytes(bytes(data))
    assert "model.safetensors's content changed" in (integrity_problem(entry, manifest) or "")
    weights.write_bytes(bytes(data[:100]))
    assert integrity_problem(entry, manifest) == "model.safetensors has 100 bytes, 4096 were written"
    weights.unlink()
    assert integrity_problem(entry, manifest) == "model.safetensors is missing"
    entry2, manifest2 = _entry(tmp_path / "two")
    (entry2 / "stray.bin").write_bytes(b"1")
    assert integrity_problem(entry2, manifest2) == "unexpected file(s): stray.bin"
    without_index = manifest2.model_copy(update={"files": {k: v for k, v in manifest2.files.items()
                                                           if k != INDEX_FILE}})
    assert integrity_problem(entry2, without_index) == f"no {INDEX_FILE}"
    (entry2 / MANIFEST_FILE).write_text('{"key": 1}')
    with pytest.raises(CorruptFileError):
        read_manifest(entry2)
    assert read_manifest(tmp_path / "nothing") is None


def test_the_lock_serialises_fusers_and_clears_their_leftovers(tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "abc"
    with entry_lock(entry):
        work = new_work_dir(entry)
        (work / "half").write_text("x")
    # a killed fuser's work dir is removed by the next holder of the lock
    order: list[str] = []
    inside = threading.Event()

    def other() -> None:
        inside.wait(10)
        with entry_lock(entry):
            order.append("second")

    thread = threading.Thread(target=other)
    thread.start()
    with entry_lock(entry):
        assert not work.exists()
        inside.set()
        thread.join(0.5)
        assert thread.is_alive()  # blocked on the lock while we hold it
        order.append("first")
        fresh = new_work_dir(entry)
        (fresh / INDEX_FILE).write_text("{}")
        commit(fresh, entry)
    thread.join(10)
    assert order == ["first", "second"]
    assert (entry / INDEX_FILE).is_file() and not fresh.exists()


def test_the_verdict_on_a_fused_models_answer() -> None:
    same = judge_fused(CANARY, CANARY.adapter)
    assert same.ok and same.verdict == "adapter-active" and same.to_adapter == 0
    lost = judge_fused(CANARY, _top([(1, -0.51), (2, -1.49), (3, -2.0)]))
    assert not lost.ok and lost.verdict == "base" and lost.to_base <= MATCH_TOLERANCE < lost.to_adapter
    drift = judge_fused(CANARY, _top([(2, -0.7), (1, -1.3), (4, -2.5)]))
    assert drift.verdict == "neither" and not drift.ok
    flat = Canary(prompt="p", base=_top([(1, -0.5)]), adapter=_top([(1, -0.52)]))
    assert judge_fused(flat, _top([(1, -0.5)])).verdict == "indistinct"

    error = refusal(lost, fused="F", adapter="A", spec=FuseSpec(bits=4))
    text = error.render()
    assert "answers as the base alone" in text and f"{lost.to_adapter:.4f}" in text and f"{lost.to_base:.4f}" in text
    assert "mlx-lm issue 1172" in text and "or with more bits" in text
    dense = refusal(drift, fused="F", adapter="A", spec=FuseSpec(dtype="float16")).render()
    assert "drifted away" in dense and "try float32" in dense and "adapters stamp" in dense
    assert "cannot tell the adapter from the base" in refusal(judge_fused(flat, _top([(1, -0.5)])), fused="F",
                                                              adapter="A", spec=FuseSpec()).render()


def test_fuse_is_refused_on_vllm_and_without_an_adapter(tmp_path: Path) -> None:
    from punie.config.models import ResolvedProfile
    from punie.launch.fuse import profile_fused_model
    from punie.launch.prepare import prepare

    vllm = Profile.model_validate({"model": str(tmp_path), "adapter": "a", "fuse": {"enabled": True},
                                   "server": {"backend": "vllm"}})
    with pytest.raises(ConfigError, match="fuse.enabled applies to mlx profiles") as info:
        prepare(ResolvedProfile(name="v", config_path=None, profile=vllm), check=False, provision=False)
    assert info.value.where == "profiles.v.fuse.enabled"
    bare = ResolvedProfile(name="b", config_path=None,
                           profile=Profile.model_validate({"model": str(tmp_path), "fuse": {"enabled": True}}))
    with pytest.raises(ConfigError, match="there is no adapter to fuse"):
        profile_fused_model(bare, model=tmp_path, adapter=None, expected=None, provision=False)
