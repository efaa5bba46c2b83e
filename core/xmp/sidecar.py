"""XMP sidecars: a photo's labels as ``dc:subject`` keywords and its caption as ``dc:description``.

A sidecar is a small XML file beside the photo, read by darktable, digiKam, Lightroom, Capture
One and exiftool; the photo itself is never opened for writing. Two naming conventions
(``sidecar_path``): ``IMG_0001.jpg.xmp`` (``append``: darktable, digiKam's default; a RAW and a JPEG
of the same shot keep separate sidecars) and ``IMG_0001.xmp`` (``replace``: Lightroom, Capture One,
digiKam's "compatible" mode).

The XML is built with ``xml.etree.ElementTree`` (namespaces registered, text escaped by the
serialiser) and an existing sidecar is parsed with ``defusedxml`` (no entity expansion, no
external entities: a sidecar is a file anyone may have put there). Merging keeps every element
and attribute of an existing sidecar: keywords are added to its ``dc:subject`` bag, the keywords
wwts wrote last time (remembered in ``wwts:subject``) are replaced rather than piled up, and a
description someone else wrote is kept.

Structure: XMP Specification Part 1 (ISO 16684-1), "dc:subject" (bag of text) and
"dc:description" (language alternative, ``xml:lang="x-default"``), and Part 3, "Sidecar files".
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_write
from ..errors import WwtsError, describe

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
XML = "http://www.w3.org/XML/1998/namespace"
#: wwts' own namespace: which keywords and which description wwts wrote, so a later run replaces
#: them instead of piling up (and never touches the keywords a person added).
WWTS = "urn:wwts:xmp:1.0/"
for _prefix, _uri in (("x", X), ("rdf", RDF), ("dc", DC), ("wwts", WWTS)):
    ET.register_namespace(_prefix, _uri)

#: ``--xmp-name`` choices: ``append`` → ``IMG_0001.jpg.xmp``, ``replace`` → ``IMG_0001.xmp``.
XMP_NAMINGS = ("append", "replace")


def sidecar_path(photo: Path, naming: str = "append") -> Path:
    """The sidecar file of ``photo``: ``IMG_0001.jpg.xmp`` (``append``) or ``IMG_0001.xmp`` (``replace``).

    Raises:
        ValueError: ``naming`` is not one of ``XMP_NAMINGS``.
    """
    photo = Path(photo)
    if naming == "append":
        return photo.with_name(photo.name + ".xmp")
    if naming == "replace":
        return photo.with_suffix(".xmp")
    raise ValueError(f"unknown XMP naming {naming!r}; valid: {', '.join(XMP_NAMINGS)}")


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _new_tree() -> ET.Element:
    """An empty ``x:xmpmeta`` with one ``rdf:RDF`` holding one ``rdf:Description rdf:about=""``."""
    meta = ET.Element(_q(X, "xmpmeta"))
    rdf = ET.SubElement(meta, _q(RDF, "RDF"))
    ET.SubElement(rdf, _q(RDF, "Description"), {_q(RDF, "about"): ""})
    return meta


def _parse(path: Path) -> ET.Element:
    """The ``x:xmpmeta`` (or bare ``rdf:RDF``) root of an existing sidecar.

    Raises:
        WwtsError: unreadable, not XML, forbidden XML (entities), or not XMP.
    """
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        # comments inside the packet are kept too (ElementTree drops them unless asked)
        parser = DET.DefusedXMLParser(target=ET.TreeBuilder(insert_comments=True))
        root = DET.parse(str(path), parser=parser).getroot()
        # keep the file's own prefixes (xmp:, darktable:, lr:...) rather than ns0:, ns1: on output
        for _, (prefix, uri) in DET.iterparse(str(path), events=("start-ns",)):
            if prefix and not re.fullmatch(r"ns\d+", prefix) and prefix not in ("xml", "wwts"):
                ET.register_namespace(prefix, uri)
    except (OSError, ET.ParseError, DefusedXmlException) as exc:
        raise WwtsError(f"existing sidecar {path} cannot be read ({describe(exc)}); it was left as it was") from None
    if root.tag == _q(RDF, "RDF"):
        meta = ET.Element(_q(X, "xmpmeta"))
        meta.append(root)
        return meta
    if root.tag != _q(X, "xmpmeta") or root.find(_q(RDF, "RDF")) is None:
        raise WwtsError(f"existing sidecar {path} is not XMP (root element {root.tag}); it was left as it was")
    return root


def _description_with(rdf: ET.Element, tag: str) -> ET.Element:
    """The ``rdf:Description`` that holds property ``tag``, else the first one (made when none)."""
    descriptions = rdf.findall(_q(RDF, "Description"))
    for d in descriptions:
        if d.find(tag) is not None or tag in d.attrib:
            return d
    if descriptions:
        return descriptions[0]
    return ET.SubElement(rdf, _q(RDF, "Description"), {_q(RDF, "about"): ""})


def _bag_items(prop: ET.Element | None) -> list[str]:
    """The texts of the ``rdf:li`` items of a bag/seq property (``[]`` when absent)."""
    if prop is None:
        return []
    return [(li.text or "") for li in prop.iter(_q(RDF, "li"))]


def _set_bag(desc: ET.Element, tag: str, items: Sequence[str]) -> None:
    """Replace property ``tag`` of ``desc`` by an ``rdf:Bag`` of ``items`` (removed when empty)."""
    for old in desc.findall(tag):
        desc.remove(old)
    desc.attrib.pop(tag, None)
    if not items:
        return
    bag = ET.SubElement(ET.SubElement(desc, tag), _q(RDF, "Bag"))
    for item in items:
        ET.SubElement(bag, _q(RDF, "li")).text = item


def _merge_subject(rdf: ET.Element, labels: Sequence[str]) -> None:
    """Keywords: the sidecar's own ``dc:subject`` less what wwts wrote last time, plus ``labels``."""
    desc = _description_with(rdf, _q(DC, "subject"))
    mine_desc = _description_with(rdf, _q(WWTS, "subject"))
    previous = set(_bag_items(mine_desc.find(_q(WWTS, "subject"))))
    keywords = [k for k in _bag_items(desc.find(_q(DC, "subject"))) if k not in previous]
    keywords += [label for label in dict.fromkeys(labels) if label not in keywords]
    _set_bag(desc, _q(DC, "subject"), keywords)
    _set_bag(mine_desc, _q(WWTS, "subject"), list(dict.fromkeys(labels)))


def _merge_description(rdf: ET.Element, caption: str) -> bool:
    """Set the ``x-default`` ``dc:description`` to ``caption`` unless someone else wrote one.

    Returns:
        True when an existing description (not written by wwts) was kept.
    """
    desc = _description_with(rdf, _q(DC, "description"))
    mine_desc = _description_with(rdf, _q(WWTS, "description"))
    mine = mine_desc.find(_q(WWTS, "description"))
    prop = desc.find(_q(DC, "description"))
    alt = prop.find(_q(RDF, "Alt")) if prop is not None else None
    items = alt.findall(_q(RDF, "li")) if alt is not None else []
    default = next((li for li in items if li.get(_q(XML, "lang")) == "x-default"), items[0] if items else None)
    current = (default.text or "") if default is not None else ""
    if current.strip() and (mine is None or (mine.text or "") != current):
        return True
    if default is None:
        if alt is None:
            prop = prop if prop is not None else ET.SubElement(desc, _q(DC, "description"))
            alt = ET.SubElement(prop, _q(RDF, "Alt"))
        default = ET.SubElement(alt, _q(RDF, "li"), {_q(XML, "lang"): "x-default"})
    default.text = caption
    if mine is None:
        mine = ET.SubElement(mine_desc, _q(WWTS, "description"))
    mine.text = caption
    return False


def xmp_bytes(labels: Sequence[str] = (), caption: str | None = None, existing: ET.Element | None = None
              ) -> tuple[bytes, bool]:
    """The sidecar's bytes: ``existing`` (or a new packet) with ``labels`` and ``caption`` merged in.

    Returns:
        ``(UTF-8 XML bytes, kept_description)``.
    """
    meta = existing if existing is not None else _new_tree()
    rdf = meta.find(_q(RDF, "RDF"))
    _merge_subject(rdf, labels)
    kept = _merge_description(rdf, caption) if caption else False
    ET.indent(meta, space=" ")
    return ET.tostring(meta, encoding="utf-8", xml_declaration=True) + b"\n", kept


def write_sidecar(photo: Path, labels: Sequence[str] = (), caption: str | None = None, *,
                  naming: str = "append") -> tuple[Path, bool, bool]:
    """Write (or merge into) the XMP sidecar of ``photo``; the photo itself is not touched.

    Args:
        photo: the image file.
        labels: keywords for ``dc:subject``, best first.
        caption: text for ``dc:description`` (``x-default``); ``None`` leaves it alone.
        naming: ``append`` (``IMG_0001.jpg.xmp``) or ``replace`` (``IMG_0001.xmp``).

    Returns:
        ``(sidecar path, created, kept_description)``: ``created`` when there was no sidecar
        before, ``kept_description`` when someone else's description was left as it was.

    Raises:
        WwtsError: the existing sidecar is unreadable or not XMP (left as it was), or the new one
            cannot be written. The sidecar is replaced atomically (temporary file + rename).
    """
    path = sidecar_path(photo, naming)
    existed = path.exists()
    data, kept = xmp_bytes(labels, caption, _parse(path) if existed else None)
    try:
        atomic_write(path, [data])
    except OSError as exc:
        raise WwtsError(f"cannot write sidecar {path}: {describe(exc)}") from None
    return path, not existed, kept


def read_sidecar(path: Path) -> dict[str, list[str] | str | None]:
    """``{"subject": [keywords], "description": x-default text or None}`` of an XMP sidecar.

    Raises:
        WwtsError: unreadable or not XMP.
    """
    rdf = _parse(Path(path)).find(_q(RDF, "RDF"))
    subject = [k for d in rdf.findall(_q(RDF, "Description")) for k in _bag_items(d.find(_q(DC, "subject")))]
    text = None
    for d in rdf.findall(_q(RDF, "Description")):
        for li in d.iterfind(f"{_q(DC, 'description')}/{_q(RDF, 'Alt')}/{_q(RDF, 'li')}"):
            if li.get(_q(XML, "lang")) == "x-default" or text is None:
                text = li.text or ""
    return {"subject": subject, "description": text}
