"""Hostile and malformed inputs: every one is refused with a one-line error naming the file (or handled), never a
crash, a huge allocation, a silent misread or a write outside the dataset root. All inputs are small fakes built
here; nothing touches the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_option_flags
from PIL import Image
from torch import nn

import ltpa
from ltpa.checkpoint import save_checkpoint
from ltpa.cli import main
from ltpa.data import build_dataset, load_tensors
from ltpa.data._decode import read_image, read_mask
from ltpa.data._download import Remote, fetch, safe_extract
from ltpa.errors import LTPAError
from ltpa.models._base import AttentionOutput, LTPAModel

# ---------------------------------------------------------------------------------------------------- images


def _png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    """A PNG with well-formed chunks (right lengths and CRCs) around ``idat``."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _short_png(path: Path) -> Path:
    """A 40x40 RGB PNG whose (complete, valid) zlib stream holds only 5 of its 40 rows."""
    rng = np.random.default_rng(0)
    rows = b"".join(b"\x00" + rng.integers(0, 256, 120, dtype=np.uint8).tobytes() for _ in range(5))
    path.write_bytes(_png(40, 40, 8, 2, zlib.compress(rows)))
    return path


def _jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose frame header is edited to claim ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def test_truncated_png_is_an_error_naming_the_file_not_a_crash(tmp_path: Path) -> None:
    """torchvision's PNG decoder segfaulted on this file (exit 139); decoded in a child process so that a
    crash fails this test instead of killing the session."""
    path = _short_png(tmp_path / "short.png")
    code = (
        "import sys; from pathlib import Path; from ltpa.data._decode import read_image\n"
        "from ltpa.errors import LTPAError\n"
        "try:\n    read_image(Path(sys.argv[1]))\n"
        "except LTPAError as err:\n    print(err); sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 3, (result.returncode, result.stderr[-500:])
    message = result.stdout.strip()
    assert len(message.splitlines()) == 1 and "short.png" in message and "truncated" in message
    # a cut in the middle of the IDAT chunk too
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(full, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(LTPAError, match=r"cut\.png"):
        read_image(cut)


@pytest.mark.parametrize("side", [65500, 9000])
def test_image_header_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    # 65500^2 trips Pillow's own bomb check in Image.open; 9000^2 (81 Mpx) only ltpa's 64 Mpx limit
    path = _jpeg_claiming(tmp_path / f"huge{side}.jpg", side, side)
    with pytest.raises(LTPAError, match=rf"huge{side}\.jpg.*over the limit") as info:
        read_image(path)
    assert len(str(info.value).splitlines()) == 1


def test_16_bit_pngs_are_scaled_to_8_bits_and_mix_with_8_bit_ones(tmp_path: Path) -> None:
    grey16 = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    image = read_image(tmp_path / "grey16.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 2, 2)
    assert image[0].tolist() == [[0, 255], [128, 1]] and torch.equal(image[0], image[2])
    # 16-bit RGB (colour type 2, depth 16), written by hand: Pillow reads it as 8-bit RGB
    rgb16 = np.array([[[65535, 0, 32896], [0, 65535, 0]]], dtype=">u2")
    raw = b"\x00" + rgb16[0].tobytes()
    (tmp_path / "rgb16.png").write_bytes(_png(2, 1, 16, 2, zlib.compress(raw)))
    assert read_image(tmp_path / "rgb16.png")[:, 0, 0].tolist() == [255, 0, 128]
    # an image folder mixing 16-bit and 8-bit files loads as one uint8 batch in 0..255
    for name, array in (("a", np.full((6, 6), 65535, np.uint16)), ("b", np.full((6, 6), 255, np.uint8))):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "set" / name / f"{name}.png")
    images, labels, _ = load_tensors(build_dataset("image-folder", root=tmp_path / "set", split="all"))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 6, 6)
    assert images.max() == 255 and labels.tolist() == [0, 1]


def test_16_bit_masks_threshold_in_their_own_range(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 65535, 20000, 40000]], dtype=np.uint16)).save(tmp_path / "m16.png")
    assert read_mask(tmp_path / "m16.png").tolist() == [[False, True, False, True]]
    Image.fromarray(np.array([[0, 1, 1, 0]], dtype=np.uint16)).save(tmp_path / "m01.png")
    assert read_mask(tmp_path / "m01.png").tolist() == [[False, True, True, False]]


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (9, 7), c).convert("P") for c in colours]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    image = read_image(tmp_path / "anim.gif")
    assert image.shape == (3, 7, 9)
    assert image[:, 3, 4].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "RGBA", "1", "I", "F"])
def test_every_mode_becomes_8_bit_rgb(tmp_path: Path, mode: str) -> None:
    rgb = Image.new("RGB", (5, 4), (255, 255, 255))
    image = (
        rgb.convert(mode)
        if mode not in ("I", "F")
        else Image.new(mode, (5, 4), 65535 if mode == "I" else 255)
    )
    suffix = ".jpg" if mode == "CMYK" else (".tif" if mode in ("I", "F") else ".png")
    image.save(tmp_path / f"x{suffix}")
    out = read_image(tmp_path / f"x{suffix}")
    assert out.dtype == torch.uint8 and out.shape == (3, 4, 5)
    assert int(out.min()) >= 250  # white stays white in every mode (the alpha channel is dropped)


# ------------------------------------------------------------------------------------- downloads / archives


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"payload"


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    "evil",
    [
        _file("../../escaped.txt"),
        _file("/tmp/ltpa-absolute-escape.txt"),
        _special("link", tarfile.SYMTYPE, "/etc/passwd"),
        _special("hard", tarfile.LNKTYPE, "../../escaped.txt"),
        _special("fifo", tarfile.FIFOTYPE),
        _special("dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "fifo", "device"],
)
def test_malicious_tar_is_refused_and_writes_nothing(
    tmp_path: Path, evil: tuple[tarfile.TarInfo, bytes | None]
) -> None:
    root = tmp_path / "a" / "b" / "root"
    root.mkdir(parents=True)
    archive = _tar(tmp_path / "evil.tar.gz", [_file("good/first.txt"), evil, _file("good/last.txt")])
    with pytest.raises(LTPAError, match=r"refusing to unpack .*evil\.tar\.gz") as info:
        safe_extract(archive, root)
    assert len(str(info.value).splitlines()) == 1
    assert list(root.iterdir()) == []  # every member is checked before anything is written
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/ltpa-absolute-escape.txt").exists()


def test_malicious_zip_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "x" / "root"
    root.mkdir(parents=True)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("Data/ok.txt", "fine")
        zipped.writestr("../../escaped.txt", "bad")
    with pytest.raises(LTPAError, match=r"refusing to unpack .*evil\.zip.*outside"):
        safe_extract(archive, root)
    assert list(root.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zipped:
        info = zipfile.ZipInfo("Data/link")
        info.external_attr = (0o120777 << 16) | 0  # a symlink entry
        zipped.writestr(info, "/etc/passwd")
    with pytest.raises(LTPAError, match="link or special file"):
        safe_extract(link, root)


def test_safe_extract_unpacks_a_clean_archive(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", [_file("folder/inner/a.txt"), _file("b.txt")])
    safe_extract(archive, tmp_path / "root")
    assert (tmp_path / "root" / "folder" / "inner" / "a.txt").read_bytes() == b"payload"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replaces torchvision's download with a recorder that fails: a test that reaches it would have gone to
    the network."""
    calls: list[str] = []

    def refuse(url: str, root: str, filename: str | None = None, md5: str | None = None) -> None:
        calls.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", refuse)
    return calls


def test_preplaced_archive_with_a_wrong_checksum_is_refused(tmp_path: Path, no_network: list[str]) -> None:
    """Before, an archive already in the root was unpacked as is, whatever it held."""
    _tar(tmp_path / "cifar-10-python.tar.gz", [_file("cifar-10-batches-py/batches.meta")])
    with pytest.raises(LTPAError, match=r"cifar-10-python\.tar\.gz does not match the published md5") as info:
        build_dataset("cifar10", root=tmp_path, split="test", download=True)
    assert len(str(info.value).splitlines()) == 1 and "delete it" in str(info.value)
    assert not (tmp_path / "cifar-10-batches-py").exists() and no_network == []


def test_fetch_verifies_a_preplaced_file_and_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    archive = _tar(tmp_path / "pack.tar.gz", [_file("pack/data.bin")])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    fetch(
        "fake",
        tmp_path,
        [Remote("pack.tar.gz", ("https://example.invalid/pack.tar.gz",), md5=md5)],
        extract=True,
    )
    assert (tmp_path / "pack" / "data.bin").is_file() and no_network == []
    fetch(
        "fake", tmp_path, [Remote("pack.tar.gz", ("https://example.invalid/p",), sha256=sha)], extract=False
    )
    with pytest.raises(LTPAError, match=r"pack\.tar\.gz does not match the published sha256"):
        fetch(
            "fake",
            tmp_path,
            [Remote("pack.tar.gz", ("https://example.invalid/p",), sha256="0" * 64)],
            extract=False,
        )

    # a download that does not match its sum is deleted, never moved into place
    def serve_garbage(url: str, root: str, filename: str | None = None, md5: str | None = None) -> None:
        (Path(root) / str(filename)).write_bytes(b"not the archive")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", serve_garbage)
    remote = Remote("other.tar.gz", ("https://example.invalid/other.tar.gz",), md5=md5)
    with pytest.raises(
        LTPAError, match=r"download of https://example\.invalid/other\.tar\.gz does not match"
    ):
        fetch("fake", tmp_path / "dl", [remote], extract=True)
    assert list((tmp_path / "dl").iterdir()) == []


def test_plain_http_mirrors_only_serve_files_with_a_known_checksum(
    no_network: list[str], tmp_path: Path
) -> None:
    from ltpa.data import cifar, cub, idx, object_discovery, stl10, svhn

    remotes = [
        cifar._CIFAR10_REMOTE,
        cifar._CIFAR100_REMOTE,
        cub._REMOTE,
        object_discovery._REMOTE,
        stl10._REMOTE,
    ]
    remotes += [svhn._remote(s) for s in ("train", "test", "extra")]
    for remote in remotes:
        assert remote.urls[0].startswith("https://"), remote
        assert remote.checksum is not None or all(u.startswith("https://") for u in remote.urls), remote
    assert all(m[0].startswith("https://") for m in idx._MIRRORS.values())
    # without a checksum, an http-only file is not downloaded at all
    with pytest.raises(LTPAError, match="no HTTPS mirror"):
        fetch("fake", tmp_path, [Remote("f.zip", ("http://example.invalid/f.zip",))], extract=True)
    assert no_network == []


# ----------------------------------------------------------------------------------------- CIFAR pickles


def test_cifar_pickle_declaring_a_huge_string_is_a_one_line_error(tmp_path: Path) -> None:
    from test_data_cifar import make_cifar10

    folder = make_cifar10(tmp_path)
    # protocol-4 BINBYTES8 declaring 2^62 bytes, followed by 3: the unpickler would try to allocate them
    (folder / "test_batch").write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc")
    with pytest.raises(LTPAError, match=r"cifar10: truncated or not a CIFAR pickle .*test_batch") as info:
        build_dataset("cifar10", root=tmp_path, split="test")
    assert len(str(info.value).splitlines()) == 1
    # a frame header claiming more than the file holds
    (folder / "test_batch").write_bytes(b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"N.")
    with pytest.raises(LTPAError, match=r"frame of .* runs past the end.*test_batch"):
        build_dataset("cifar10", root=tmp_path, split="test")


# ----------------------------------------------------------------------------------------------- IDX labels


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, code, array.ndim)
        + struct.pack(f">{array.ndim}i", *array.shape)
        + array.tobytes()
    )


@pytest.mark.parametrize(
    ("labels", "code"), [(np.array([3, -1, 2], ">i4"), 0x0C), (np.array([1, -1, 0], np.int8), 0x09)]
)
def test_negative_idx_labels_are_refused_naming_the_file(
    tmp_path: Path, labels: np.ndarray, code: int
) -> None:
    images = np.zeros((3, 28, 28), np.uint8)
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels, code)))
    with pytest.raises(
        LTPAError, match=r"labels outside 0\.\.9 \(found -1\.\.\d\).*train-labels-idx1-ubyte"
    ) as info:
        build_dataset("mnist", root=tmp_path, split="train")
    assert len(str(info.value).splitlines()) == 1
    floats = np.array([0.5, 1.0, 2.0], ">f4")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(floats, 0x0D)))
    with pytest.raises(LTPAError, match="labels must be integers"):
        build_dataset("mnist", root=tmp_path, split="train")


# --------------------------------------------------------------------------------------------------- export


class _BigLogits(LTPAModel):
    """Logits near 1e5: float32 holds them to about 1e-2, far above an absolute tolerance of 1e-4."""

    def __init__(self) -> None:
        super().__init__(num_classes=3, img_size=16)
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0, 1.0, 0.5], [1.0, 3.0, 1.0], [0.5, 0.2, 4.0]]))
            self.fc.bias.fill_(1e5)

    def _forward(self, x: torch.Tensor) -> tuple[AttentionOutput, torch.Tensor]:
        feats = x.mean(dim=(2, 3))
        return AttentionOutput(self.fc(feats), [], []), feats


def test_export_check_is_relative_for_large_logits(tmp_path: Path) -> None:
    from ltpa.export import check_export, export_model

    model = _BigLogits().eval()
    path = export_model(model, tmp_path / "big.onnx", "onnx")  # passes whatever the rounding of 1e5 + x
    # a relative change of ~3e-7 (2 float32 ulps): 0.03 absolute at 1e5, yet as close as float32 gets
    with torch.no_grad():
        model.fc.bias.mul_(1 + 3e-7)
    worst = check_export(path, model, "onnx")
    assert worst > 1e-4  # the old absolute-only rule (atol 1e-4) refused this file
    with torch.no_grad():
        model.fc.bias.mul_(1 + 1e-3)  # a real disagreement is still caught
    with pytest.raises(LTPAError, match=r"differs from PyTorch by .* rtol"):
        check_export(path, model, "onnx")
    with pytest.raises(LTPAError, match="rtol must be a finite number"):
        check_export(path, model, "onnx", rtol=-1.0)


def test_export_bad_opset_is_one_line_without_an_ir_dump(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from ltpa.export import export_model

    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=3, width=0.0625)
    with pytest.raises(LTPAError, match="opset 999 is not supported"):
        export_model(model, tmp_path / "m.onnx", opset=999)
    save_checkpoint(tmp_path / "run" / "last", model, epoch=1)
    capfd.readouterr()
    assert main(["export", str(tmp_path / "run"), "--opset", "999"]) == 2
    out, err = capfd.readouterr()
    assert out == ""  # the exporter's IR graph is not dumped
    assert len(err.strip().splitlines()) == 1 and "--opset 7.." in err
    assert not (tmp_path / "run" / "last.onnx").exists()


# -------------------------------------------------------------------------------- file modes and load_model


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=3, width=0.0625)
    before = os.umask(umask)
    try:
        weights, sidecar = save_checkpoint(tmp_path / "run" / "last", model, epoch=1)
    finally:
        os.umask(before)
    for path in (weights, sidecar):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_load_model_is_exported_at_the_top_level(tmp_path: Path) -> None:
    assert "load_model" in ltpa.__all__
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=4, width=0.0625)
    save_checkpoint(tmp_path / "run" / "last", model, epoch=1)
    loaded = ltpa.load_model(tmp_path / "run")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert not loaded.training and loaded.run_name == "run"


# --------------------------------------------------------------------------------- evaluation commands


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained narrow checkpoint at 16x16: enough for the commands to run end to end."""
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=10, width=0.0625, img_size=16)
    root = tmp_path_factory.mktemp("tiny")
    save_checkpoint(root / "tiny" / "last", model, epoch=1)
    return root / "tiny"


def _command(name: str, run: Path, out: Path, folder: Path) -> list[str]:
    data = ["--data", "cluttered-digits", *data_option_flags(), "--limit", "8"]
    pictures = ["--data", "cluttered-digits", *data_option_flags(), "--count", "2", "--no-gradcam"]
    unseen = ["--data", "image-folder", "--root", str(folder), "--folds", "2"]
    args = {
        "eval": ["eval", str(run), *data],
        "attack": ["attack", str(run), *data, "--eps", "0,2"],
        "segment": ["segment", str(run), *data, "--no-gradcam", "--examples", "2"],
        "localize": ["localize", str(run), *data],
        "visualize": ["visualize", str(run), *pictures],
        "transfer": ["transfer", str(run), *unseen, "--data-option", "train_fraction=0.5"],
        "predict": ["predict", str(run), str(sorted(folder.rglob("*.png"))[0])],
        "report": ["report", str(run), *data, "--examples", "1", "--attack-images", "8", "--eps", "0,2"],
    }[name]
    return [*args, "--out", str(out)]


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize(
    "command", ["eval", "attack", "segment", "localize", "visualize", "transfer", "predict", "report"]
)
def test_evaluation_commands_accept_device_auto(
    command: str, tiny_run: Path, fake_image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _command(command, tiny_run, tmp_path / "out", fake_image_folder)
    assert main([*args, "--device", "auto"]) == 0, capsys.readouterr().err
    assert any((tmp_path / "out").iterdir())
    capsys.readouterr()
    assert main([*args, "--device", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'nonsense'" in err and len(err.strip().splitlines()) == 1


def test_auto_device_resolves_to_cuda_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    from ltpa.evaluate._data import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("alpha", ["-1", "0", "nan"])
def test_pgd_with_a_non_positive_step_is_a_one_line_error(
    alpha: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["attack", str(tiny_run), "--data", "cluttered-digits", "--method", "pgd", "--alpha", alpha]
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--alpha" in err and "> 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "attack.csv").exists()
    from ltpa.evaluate import pgd

    with pytest.raises(LTPAError, match="step size"):
        pgd(nn.Identity(), torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long), 0.1, alpha=-0.01)


@pytest.mark.parametrize("command", ["segment", "localize"])
@pytest.mark.parametrize("size", ["100000", "-3"])
def test_map_size_out_of_range_is_a_one_line_error(
    command: str, size: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [command, str(tiny_run), "--data", "cluttered-digits", *data_option_flags(), "--limit", "4"]
    assert main([*args, "--size", size, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--size must be a whole number of pixels in 1..1024" in err and size in err
    assert len(err.strip().splitlines()) == 1


def test_yaml_tag_in_a_data_option_is_a_usage_error(capsys):
    import ltpa.cli

    args = [
        "train",
        "--model",
        "vgg",
        "--data",
        "cluttered-digits",
        "--data-option",
        "x=!!python/object:os.system",
    ]
    with pytest.raises(SystemExit) as exit_info:
        ltpa.cli.main(args)
    assert exit_info.value.code == 2
    assert "not plain YAML data" in capsys.readouterr().err


def test_sidecar_edited_to_another_num_classes_is_a_one_line_error(tmp_path):
    import json

    from ltpa import create_model
    from ltpa.checkpoint import load_model, save_checkpoint

    model = create_model("vgg", width=0.0625, num_classes=10)
    save_checkpoint(tmp_path / "run" / "last", model, epoch=1)
    sidecar = tmp_path / "run" / "last.json"
    meta = json.loads(sidecar.read_text())
    meta["model_kwargs"]["num_classes"] = 7
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(LTPAError, match=r"in the weights but .* in the model; restore the sidecar"):
        load_model(tmp_path / "run")


# ----------------------------------------------------------------------------------- unusable output, start-up


@pytest.mark.parametrize("command", ["eval", "export"])
def test_an_output_path_under_a_file_is_a_one_line_error(
    command: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    args = {
        "eval": ["eval", str(tiny_run), "--data", "cluttered-digits", *data_option_flags(), "--limit", "4"],
        "export": ["export", str(tiny_run), "--no-check"],
    }[command]
    assert main([*args, "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "a-file" in err and "choose another --out" in err
    assert blocker.read_text() == "keep me"


def test_export_into_an_unwritable_folder_names_that_folder_not_a_temporary_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["export", str(tiny_run), "--no-check", "--file", str(locked / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert str(locked) in err and ".tmp" not in err and "permission" in err


def test_atomic_write_names_the_target_when_the_write_fails(tmp_path: Path) -> None:
    import errno

    from ltpa.checkpoint import atomic_write

    def fail(tmp: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "weights.bin", fail)
    assert info.value.filename == str(tmp_path / "weights.bin")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_ctrl_c_while_the_cli_starts_is_a_clean_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ltpa.cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ltpa.cli, "build_parser", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "ltpa command: interrupted"


def test_importing_ltpa_does_not_load_pytorch_until_a_model_is_needed() -> None:
    code = (
        "import sys, ltpa, ltpa.cli; before = 'torch' in sys.modules; ltpa.create_model; "
        "print(before, 'torch' in sys.modules, ltpa.LTPAError.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True", "LTPAError"]
