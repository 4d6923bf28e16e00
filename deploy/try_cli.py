"""`lsfn try FUNCTION IMAGE...`: run a function on local images without Label Studio, and see
what it answers: one PNG per image with the regions drawn on it (shared/drawing.py) and the
raw JSON beside it. In this process (the same request cycle as `lsfn serve`) or, with
``--url``, against a running function.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

__all__ = ["add_parser", "example_config", "run"]

_XML_BLOCK = re.compile(r"```xml\s*\n(.*?)```", re.S)


def add_parser(commands: Any) -> None:
    cmd = commands.add_parser("try", help="run a function on local images and draw what it answers")
    cmd.add_argument("function", help="a folder under functions/, a function folder or a module path")
    cmd.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    cmd.add_argument("--config", type=Path, help="a label config file (default: the first one in the function's README)")
    cmd.add_argument("--prompt", help="text for a grounding function, as typed into a TextArea")
    cmd.add_argument("--click", action="append", default=[], metavar="X,Y[,neg]", help="a click in pixels (repeatable)")
    cmd.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="a box in pixels (repeatable)")
    cmd.add_argument("--out", type=Path, default=Path("lsfn-try"), help="where the PNGs and the JSON go (default lsfn-try/)")
    cmd.add_argument("--url", help="a running function's URL instead of running it here")


def example_config(function: str) -> str:
    """The first label config in the function's README."""
    from lsfn.shared.cli import resolve_function

    readme = resolve_function(function).parent / "README.md"
    for block in _XML_BLOCK.findall(readme.read_text() if readme.is_file() else ""):
        if "<View" in block:
            return block.strip()
    raise ValueError(f"no label config in {readme}: give --config")


def _numbers(text: str, count: int, what: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts[:count]]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"{what} {text!r}: give {count} numbers separated by commas")
    return values


def context_for(config: Any, size: tuple[int, int], args: argparse.Namespace) -> dict[str, Any] | None:
    """The interactive context Label Studio would send for the prompt, clicks and boxes."""
    from lsfn.deploy.prelabel import prompt_context

    width, height = size
    regions: list[dict[str, Any]] = []
    image = next(iter(config.objects.values())).name if config.objects else "image"
    for kind, given in (("keypointlabels", args.click), ("rectanglelabels", args.box)):
        if not given:
            continue
        tag = "KeyPointLabels" if kind == "keypointlabels" else "RectangleLabels"
        control = next((c for c in config.controls if c.tag == tag), None)
        if control is None:
            raise ValueError(f"--{'click' if tag == 'KeyPointLabels' else 'box'} needs a {tag} in the label config")
        label = control.label_values[0] if control.label_values else "object"
        for text in given:
            if kind == "keypointlabels":
                x, y = _numbers(text, 2, "--click")
                value = {"x": x * 100 / width, "y": y * 100 / height, "width": 1.0, "keypointlabels": [label]}
                positive = not text.endswith(",neg")
            else:
                x0, y0, x1, y1 = _numbers(text, 4, "--box")
                value = {"x": x0 * 100 / width, "y": y0 * 100 / height, "width": (x1 - x0) * 100 / width,
                         "height": (y1 - y0) * 100 / height, "rotation": 0, "rectanglelabels": [label]}  # fmt: skip
                positive = True
            regions.append({"type": kind, "from_name": control.name, "to_name": image, "value": value,
                            "original_width": width, "original_height": height, "image_rotation": 0,
                            "is_positive": positive, "origin": "manual", "id": f"try{len(regions)}"})  # fmt: skip
    if args.prompt:
        regions += prompt_context(config.xml, args.prompt)["result"]
    return {"result": regions} if regions else None


def run(args: argparse.Namespace) -> int:
    from lsfn.shared.drawing import draw_regions
    from lsfn.shared.image_decode import decode_image
    from lsfn.shared.label_config import parse_label_config
    from lsfn.shared.settings import get_settings

    try:
        label_config = args.config.read_text() if args.config else example_config(args.function)
        config = parse_label_config(label_config)
        send = _sender(args)
        args.out.mkdir(parents=True, exist_ok=True)
        failed = 0
        for number, path in enumerate(args.images, start=1):
            data = path.read_bytes()
            decoded = decode_image(data, get_settings().max_image_pixels)
            first = next(iter(config.objects.values()), None)
            key = (first.value_key if first is not None else None) or "image"
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            context = context_for(config, (decoded.width, decoded.height), args)
            body = {"tasks": [{"id": number, "data": {key: uri}}], "label_config": label_config, "project": "0.0",
                    "params": {"login": None, "password": None, "context": context}}  # fmt: skip
            status, answer = send(json.dumps(body).encode())
            (args.out / f"{path.stem}.json").write_text(json.dumps(answer, indent=2))
            items = answer.get("results") if isinstance(answer, dict) else None
            item = items[0] if isinstance(items, list) and items else {}
            if status != 200 or "result" not in item:
                failed += 1
                problem = answer.get("detail") if status != 200 and isinstance(answer, dict) else item.get("error")
                print(f"{path}: the function answered {status}: {problem}", file=sys.stderr)
                continue
            picture = args.out / f"{path.stem}.png"
            draw_regions(decoded.pixels, item["result"]).save(picture)
            labels = sorted({r.get("type", "") for r in item["result"]})
            print(f"{picture}: {len(item['result'])} regions ({', '.join(labels) or 'none'})")
    except ValidationError:  # a variable of the function's settings: main() names it
        raise
    except (ValueError, OSError) as exc:
        print(f"lsfn: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _sender(args: argparse.Namespace) -> Any:
    """(status, parsed answer) of a /predict body, here or at --url."""
    if args.url:
        import urllib3

        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=300))

        def over_http(body: bytes) -> tuple[int, Any]:
            response = http.request("POST", args.url.rstrip("/") + "/predict", body=body, headers={"Content-Type": "application/json"})
            return response.status, json.loads(response.data or b"null")

        return over_http
    from lsfn.shared.cli import function_runtime

    runtime = function_runtime(args.function)
    runtime.start()

    def here(body: bytes) -> tuple[int, Any]:
        status, data, _ = runtime.call("POST", "/predict", body, {"Content-Type": "application/json"})
        return status, json.loads(data)

    return here
