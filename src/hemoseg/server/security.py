"""Turning an untrusted upload into one study folder the readers can open.

Why it is done this way:

* The request body is streamed to disk with a running byte count, so a large
  or endless upload costs neither memory nor more than the limit in disk, and
  is cut off with 413 the moment it passes the limit.
* File types are decided from content (magic bytes), never from names: a
  renamed executable is refused, and a DICOM file called "IM0001" is accepted.
  Files are then renamed to a suffix matching their content, because the
  readers choose their decoder by suffix.
* Zip archives are opened with our own extraction loop: absolute paths, ".."
  and symbolic links are refused, sizes and compression ratios are checked
  before (declared) and during (actual bytes) extraction, and every entry is
  written under a generated name (d0000/00012.dcm). User-chosen names never
  reach the file system, so they cannot escape the folder, and folder names
  (PACS exports often use the patient's name) never appear in results.
"""

from __future__ import annotations

import gzip
import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from hemoseg.server.limits import MB, ServerSettings, human_bytes

HEAD_BYTES = 352
KIND_SUFFIX = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg", "nifti": ".nii",
               "nifti-gz": ".nii.gz"}
KIND_WORDS = {"dicom": "DICOM", "png": "PNG", "jpeg": "JPEG", "nifti": "NIfTI",
              "nifti-gz": "NIfTI (gzip)", "zip": "zip"}
# Names that promise a type; such a file whose content disagrees is an error,
# not silently dropped (a dropped slice would shrink the measured volume).
CLAIMING_SUFFIXES = {".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".nii", ".gz"}
SKIP_NAMES = {"dicomdir", "thumbs.db", "desktop.ini", ".ds_store"}
ACCEPTED = "a zip of DICOM files, DICOM files, a NIfTI volume (.nii/.nii.gz) or PNG/JPEG slices"


class ApiError(Exception):
    """A request the server refuses; becomes a JSON error {"error", "message"}, plus
    `extra` fields where a client can act on them (the series to choose from)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(" ".join(str(message).split()))
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def message(self) -> str:
        return str(self)


# --------------------------------------------------------------------------
# content sniffing
# --------------------------------------------------------------------------
def is_nifti_header(head: bytes) -> bool:
    """Single-file NIfTI-1 (sizeof_hdr 348, magic "n+1") or NIfTI-2 (540, "n+2"),
    either byte order. Analyze/pair files ("ni1") cannot be read from one file."""
    if len(head) < 8:
        return False
    size = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 540 in size and head[4:8] == b"n+2\x00":
        return True
    return 348 in size and len(head) >= 348 and head[344:348] == b"n+1\x00"


def sniff_bytes(head: bytes) -> str | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # 05 06: an empty archive
        return "zip"
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if is_nifti_header(head):
        return "nifti"
    return None


def sniff_file(path: Path) -> str | None:
    """"zip" | "dicom" | "png" | "jpeg" | "nifti" | "nifti-gz" | None."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    kind = sniff_bytes(head)
    if kind == "gzip":
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(HEAD_BYTES)
        except (OSError, EOFError, zlib.error):
            return None
        return "nifti-gz" if is_nifti_header(inner) else None
    return kind


def shown_name(name: str) -> str:
    """A user-supplied name made safe to echo back in a one-line message."""
    base = re.split(r"[\\/]", name)[-1] or name
    base = re.sub(r"[^\w.\- ]", "_", base)
    return base if len(base) <= 60 else base[:57] + "..."


# --------------------------------------------------------------------------
# streaming the request body to disk
# --------------------------------------------------------------------------
@dataclass
class ReceivedFile:
    path: Path
    client_name: str
    """Only used to order PNG/JPEG slices and in replies to the uploader;
    never logged and never used as a path."""
    size: int = 0


def too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large",
                          f"upload is larger than the server's {human_bytes(limit)} limit "
                          "(hemoseg serve --max-upload-mb)")


class _MultipartSink:
    """python-multipart callbacks writing each file part straight to disk."""

    def __init__(self, folder: Path, max_files: int):
        self.folder = folder
        self.max_files = max_files
        self.files: list[ReceivedFile] = []
        self._fh = None
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._field,
                "on_header_value": self._val, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self):
        self._headers = {}

    def _field(self, data, start, end):
        self._name += data[start:end]

    def _val(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def _headers_done(self):
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = params.get(b"filename")
        if filename is None:  # a plain form field: not a file, ignore it
            self._fh = None
            return
        if len(self.files) >= self.max_files:
            raise ApiError(413, "too_many_files",
                                 f"upload holds more than {self.max_files} files; zip the study")
        path = self.folder / f"part_{len(self.files):05d}"
        self._fh = open(path, "wb")
        self.files.append(ReceivedFile(path, filename.decode("utf-8", "replace")))

    def _data(self, data, start, end):
        if self._fh is not None:
            self._fh.write(data[start:end])
            self.files[-1].size += end - start

    def _end(self):
        self.close()

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_upload(request, folder: Path, settings: ServerSettings) -> tuple[list[ReceivedFile], int]:
    """Stream the body (multipart/form-data, or one raw file) into `folder`.
    Returns the files and the body size; raises 413 as soon as the limit passes."""
    from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
    from starlette.requests import ClientDisconnect

    folder.mkdir(parents=True, exist_ok=True)
    limit = settings.max_upload_bytes
    mime, params = parse_options_header(request.headers.get("content-type", ""))
    total = 0
    try:
        if mime == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
            sink = _MultipartSink(folder, settings.max_files)
            parser = MultipartParser(boundary, sink.callbacks())
            try:
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > limit:
                        raise too_large(limit)
                    parser.write(chunk)
                parser.finalize()
            except MultipartParseError as exc:
                raise ApiError(400, "bad_multipart", f"malformed multipart body ({exc})") from None
            finally:
                sink.close()
            return sink.files, total
        path = folder / "part_00000"
        with open(path, "wb") as f:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise too_large(limit)
                f.write(chunk)
        name = request.headers.get("x-filename", "") or "request body"
        return ([ReceivedFile(path, name, total)] if total else []), total
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection "
                             "before the upload finished") from None


# --------------------------------------------------------------------------
# validation and layout
# --------------------------------------------------------------------------
@dataclass
class PreparedUpload:
    root: Path
    """Folder handed to the readers' discover()."""
    kind: str
    """"zip" | "dicom" | "nifti" | "image": what was uploaded."""
    n_files: int
    warnings: list[str] = field(default_factory=list)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def check_image(path: Path, settings: ServerSettings, label: str) -> None:
    """Read only the header: a small PNG can decode to gigabytes."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large", f"{label} is too large to decode") from None
    except Exception:
        raise ApiError(422, "bad_image", f"{label} is not a readable PNG/JPEG image") from None
    if max(w, h) > settings.max_image_side:
        raise ApiError(413, "image_too_large",
                             f"{label} is {w}x{h} pixels; slices larger than "
                             f"{settings.max_image_side} pixels per side are refused")


def check_gunzip_size(path: Path, settings: ServerSettings, label: str) -> None:
    """nibabel decompresses in memory: refuse gzip bombs before it tries."""
    limit, n = settings.max_unpacked_bytes, 0
    try:
        with gzip.open(path, "rb") as g:
            while chunk := g.read(MB):
                n += len(chunk)
                if n > limit:
                    raise ApiError(413, "unpacked_too_large",
                                         f"{label} decompresses to more than {human_bytes(limit)}")
    except (OSError, EOFError, zlib.error):
        raise ApiError(422, "bad_gzip", f"{label} is a damaged or truncated .gz file") from None


def _validate(path: Path, kind: str, settings: ServerSettings, label: str) -> None:
    if kind in ("png", "jpeg"):
        check_image(path, settings, label)
    elif kind == "nifti-gz":
        check_gunzip_size(path, settings, label)


def _check_member_name(name: str) -> None:
    n = name.replace("\\", "/")
    shown = shown_name(name)
    if "\x00" in n:
        raise ApiError(422, "unsafe_zip_entry", "zip entry name holds a NUL byte; "
                             "the archive was refused")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise ApiError(422, "unsafe_zip_entry", f"zip entry '{shown}' has an absolute "
                             "path; the archive was refused")
    if ".." in n.split("/"):
        raise ApiError(422, "unsafe_zip_entry", f"zip entry '{shown}' points outside "
                             "the archive ('..' in its path); the archive was refused")


def extract_zip(zpath: Path, dest: Path, settings: ServerSettings) -> tuple[int, list[str]]:
    """Safely unpack into dest/dNNNN/NNNNN<suffix>. Returns (files kept, warnings)."""
    bomb = "zip archive expands to more than {}; refused (zip bomb protection)"
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ApiError(422, "bad_zip", "zip archive is damaged or truncated") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > settings.max_zip_entries:
            raise ApiError(413, "zip_too_many_entries",
                                 f"zip archive has {len(infos)} entries; the limit is "
                                 f"{settings.max_zip_entries}")
        members, skipped = [], 0
        for info in infos:
            _check_member_name(info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise ApiError(422, "unsafe_zip_entry",
                                     f"zip entry '{shown_name(info.filename)}' is a symbolic link; "
                                     "the archive was refused")
            if info.is_dir():
                continue
            if mode not in (0, stat.S_IFREG):
                raise ApiError(422, "unsafe_zip_entry",
                                     f"zip entry '{shown_name(info.filename)}' is not a regular "
                                     "file; the archive was refused")
            if info.flag_bits & 0x1:
                raise ApiError(422, "encrypted_zip", "zip archive is password-protected; "
                                     "upload an unencrypted archive")
            parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
            if (parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)
                    or parts[-1].lower() in SKIP_NAMES):
                skipped += 1
                continue
            members.append((parts, info))
        if not members:
            raise ApiError(422, "empty_zip", "zip archive is empty" if not skipped else
                                 f"zip archive holds only hidden or system files ({skipped})")
        declared = sum(i.file_size for _, i in members)
        limit = settings.max_unpacked_bytes
        if declared > limit:
            raise ApiError(413, "zip_bomb", bomb.format(human_bytes(limit)))
        ratio = settings.max_compression_ratio
        if declared > MB and declared / max(zpath.stat().st_size, 1) > ratio:
            raise ApiError(413, "zip_bomb", f"zip archive is compressed more than "
                                 f"{ratio:g}:1; refused (zip bomb protection)")
        for _, i in members:
            if i.file_size > MB and i.file_size / max(i.compress_size, 1) > ratio:
                raise ApiError(413, "zip_bomb", f"zip entry '{shown_name(i.filename)}' is "
                                     f"compressed more than {ratio:g}:1; refused (zip bomb protection)")

        by_dir: dict[tuple, list] = {}
        for parts, info in members:
            by_dir.setdefault(tuple(parts[:-1]), []).append((parts[-1], info))
        root = dest.resolve()
        written, kept, other, nested = 0, 0, 0, 0
        try:
            for d, (_, entries) in enumerate(sorted(by_dir.items())):
                folder = dest / f"d{d:04d}"
                folder.mkdir(parents=True, exist_ok=True)
                entries.sort(key=lambda e: _natural_key(e[0]))
                for j, (name, info) in enumerate(entries):
                    target = folder / f"{j:05d}"
                    if root not in target.resolve().parents:  # cannot happen: generated names
                        raise ApiError(422, "unsafe_zip_entry", "zip entry escapes the folder")
                    n = 0
                    with zf.open(info) as src, open(target, "xb") as out:
                        while chunk := src.read(MB):
                            n += len(chunk)
                            written += len(chunk)
                            if n > info.file_size or written > limit:
                                raise ApiError(413, "zip_bomb", bomb.format(human_bytes(limit)))
                            out.write(chunk)
                    kind = sniff_file(target)
                    label = f"zip entry '{shown_name(name)}'"
                    if kind is None or kind == "zip":
                        target.unlink()
                        suffix = Path(name.lower()).suffix
                        if kind is None and suffix in CLAIMING_SUFFIXES:
                            raise ApiError(415, "unsupported_type",
                                                 f"{label} is named {suffix} but its content is not "
                                                 "DICOM, NIfTI, PNG or JPEG")
                        nested += kind == "zip"
                        other += kind is None
                        continue
                    _validate(target, kind, settings, label)
                    target.rename(target.with_name(target.name + KIND_SUFFIX[kind]))
                    kept += 1
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise ApiError(422, "bad_zip", f"zip archive is damaged or uses an unsupported "
                                 f"compression ({type(exc).__name__})") from None
    warnings = []
    if other:
        warnings.append(f"ignored {other} file(s) in the zip that are not DICOM, NIfTI, PNG or JPEG")
    if nested:
        warnings.append(f"ignored {nested} zip archive(s) inside the zip (not opened)")
    if not kept:
        raise ApiError(422, "no_images", f"zip archive holds no DICOM, NIfTI, PNG or JPEG "
                             f"file ({other + nested + skipped} other file(s) ignored)")
    return kept, warnings


def prepare_upload(files: list[ReceivedFile], dest: Path, settings: ServerSettings) -> PreparedUpload:
    """Check received files by content and lay them out as one study folder
    `dest`; the received files are moved or deleted."""
    if not files:
        raise ApiError(422, "no_file", f"the upload holds no file; send {ACCEPTED} as "
                             "multipart/form-data field 'files', or one file as the request body")
    for f in files:
        if f.size == 0:
            raise ApiError(422, "empty_file", f"'{shown_name(f.client_name)}' is empty")
    kinds = [sniff_file(f.path) for f in files]
    for f, k in zip(files, kinds):
        if k is None:
            raise ApiError(415, "unsupported_type",
                                 f"'{shown_name(f.client_name)}' is not {ACCEPTED} "
                                 "(the type is read from the file's content, not its name)")
    dest.mkdir(parents=True, exist_ok=True)
    single = {"zip", "nifti", "nifti-gz"}
    if len(files) > 1 and single & set(kinds):
        word = "a zip archive" if "zip" in kinds else "a NIfTI volume"
        raise ApiError(422, "one_study", f"{word} must be uploaded on its own "
                             "(one study per upload)")
    warnings: list[str] = []
    kind0 = kinds[0]
    if kind0 == "zip":
        n, warnings = extract_zip(files[0].path, dest, settings)
        files[0].path.unlink()
        return PreparedUpload(dest, "zip", n, warnings)
    if kind0 in ("nifti", "nifti-gz"):
        _validate(files[0].path, kind0, settings, f"'{shown_name(files[0].client_name)}'")
        shutil.move(files[0].path, dest / ("volume" + KIND_SUFFIX[kind0]))
        return PreparedUpload(dest, "nifti", 1)
    if set(kinds) == {"dicom"}:
        for i, f in enumerate(files):
            shutil.move(f.path, dest / f"{i:05d}.dcm")
        return PreparedUpload(dest, "dicom", len(files))
    if set(kinds) <= {"png", "jpeg"}:
        # slice order is the natural order of the names the user gave them
        order = sorted(range(len(files)), key=lambda i: (_natural_key(files[i].client_name), i))
        for j, i in enumerate(order):
            _validate(files[i].path, kinds[i], settings, f"'{shown_name(files[i].client_name)}'")
            shutil.move(files[i].path, dest / f"{j:05d}{KIND_SUFFIX[kinds[i]]}")
        return PreparedUpload(dest, "image", len(files))
    found = ", ".join(sorted({KIND_WORDS[k] for k in kinds}))
    raise ApiError(415, "mixed_types", f"the upload mixes file types ({found}); "
                         "upload one study of one kind")
