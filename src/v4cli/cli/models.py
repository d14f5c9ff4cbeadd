"""`v4 pull`, `list`, `show` and `rm`: the models on this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import DeviceOpt, JsonOpt, app, console, handled, opt

if TYPE_CHECKING:
    from ..console import Console


@app.command()
def pull(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="flash, pro, a Hub repo id (owner/name) or tiny.")],
    revision: Annotated[str | None, opt("--revision", metavar="REV", help="Branch, tag or commit.")] = None,
    include: Annotated[list[str] | None, opt("--include", metavar="GLOB", help="Only files matching this glob "
                                              "(repeatable; config and tokenizer always come).")] = None,
    token: Annotated[str | None, opt("--token", metavar="TOKEN", envvar="HF_TOKEN", help="Hub token.")] = None,
    checksums: Annotated[bool, opt("--checksums", help="Also hash every file against the Hub.")] = False,
    context: Annotated[int, opt("--context", min=256, metavar="TOKENS", help="Context of the memory plan "
                                "printed first.")] = 32768,
    device: DeviceOpt = "auto",
) -> None:
    """Download a model from the Hugging Face Hub, then check it. A pull that stopped (Ctrl-C, a lost
    connection, a reboot) continues where it stopped, inside the file it was writing.

    The memory plan comes first, with a warning when the model cannot fit this machine (the pull goes on).
    HF_ENDPOINT picks a mirror, HF_HUB_OFFLINE=1 only checks the local cache.

    Examples:

      v4 pull flash

      v4 pull deepseek-ai/DeepSeek-V4-Pro --revision main
    """
    from .. import hub
    from ..runtime.plan import MemoryPlanError

    c = console()
    with handled(c, f"pull interrupted: run `v4 pull {model}` again to continue where it stopped"):
        plan = hub.plan_for_pull(model, context, device)
        if plan is not None:
            c.info(plan.describe())
            try:
                plan.check()
            except MemoryPlanError as e:
                c.warn(f"{model} at {context:,} tokens cannot run on this machine as it is: {e}. Pulling anyway.")
        elif hub.repo_id_of(model) is not None:
            c.note(f"no memory plan before the download: v4 knows the config of flash and pro only "
                   f"(`v4 show {model} --context N` gives it once pulled)")
        with c.download(model) as progress:
            path = hub.pull(model, revision=revision, include=include or None, token=token, progress=progress,
                            checksums=checksums)
        c.info(f"{model} is ready at {path}")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List the models on this machine (the built-in tiny once written, folders, pulled repos).

    Examples:

      v4 list

      v4 list --json
    """
    from .. import hub
    from ..sizes import size

    c = console()
    with handled(c):
        models = hub.list_models()
        if as_json:
            c.json([{"name": m.name, "kind": m.kind, "path": str(m.path), "size_bytes": m.size_bytes,
                     "revision": m.revision} for m in models])
        elif not models:
            c.info("no models yet: `v4 pull flash` downloads one; `tiny` is built in (random weights)")
        else:
            rows = [(m.name, size(m.size_bytes), m.kind, str(m.path)) for m in models]
            c.table(["NAME", "SIZE", "KIND", "PATH"], rows, right=[1])


app.command("ls", hidden=True, help="Same as list.")(list_)


@app.command()
def show(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name, repo id or folder.")],
    context: Annotated[int | None, opt("--context", min=1, metavar="TOKENS", help="The memory plan at this "
                                        "context (default: the model's longest).")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Show a model's configuration, its layout and storage formats on disk, its size and the memory it needs.

    Only the file headers are read. A folder with missing, cut-off or mismatched files is listed with
    its problems and the command exits with status 1. flash and pro answer before they are pulled too,
    with their memory plan (at 32,768 tokens without --context).

    Examples:

      v4 show flash --context 131072

      v4 show tiny --json
    """
    from .. import hub

    c = console()
    with handled(c):
        info = hub.show(model, context, device=device)
        problems, remedy = info.pop("problems", []), info.pop("remedy", None)
        if as_json:
            c.json({**info, "problems": problems, "remedy": remedy})
        else:
            _print_show(c, info)
        if problems:  # a damaged or incomplete folder is not fine to use: say so, and fail
            c.error(f"{info['name']} cannot be loaded: {len(problems)} problem{'s' if len(problems) != 1 else ''}:\n"
                    + "\n".join(f"  - {p}" for p in problems) + (f"\n{remedy}" if remedy else ""))
            raise typer.Exit(1)
        if model == "tiny" and not as_json:
            c.note("tiny has random weights: its output is noise")


def _print_show(c: Console, info: dict[str, Any]) -> None:
    from ..sizes import gigabytes, size

    plan, status, pulled = info.pop("memory_plan", None), info.pop("status", None), info.pop("pulled", True)
    storage, layout = info.pop("storage", {}), info.pop("layout_title", None)
    info.pop("layout", None)
    info.pop("tensor_bytes", None)  # the index's total (`weights`) says the same
    pretty = {k.replace("_", " "): v for k, v in info.items() if v is not None}
    for key in ("weights bytes", "disk bytes"):
        if key in pretty:
            pretty[key.replace(" bytes", "")] = size(pretty.pop(key))
    if not pulled:
        pretty.pop("disk", None)
        pretty["download"] = f"about {gigabytes(pretty.pop('download bytes'))}"
    pretty["layer types"] = ", ".join(f"{n} {k}" for k, n in info["layer_types"].items())
    if layout:
        pretty["layout"] = layout
    if storage:
        pretty["storage"] = ", ".join(f"{fam} {fmt}" for fam, fmt in storage.items())
    c.fields(pretty)
    if plan is not None:
        c.print()
        c.print(plan["text"])
        if not plan["fits"]:
            c.warn(f"{info['name']} at {plan['context']:,} tokens does not fit this machine's memory as it is")
    if status is not None:
        c.info(status)


@app.command()
def rm(model: Annotated[str, typer.Argument(metavar="MODEL", help="Model to delete (all its revisions).")]) -> None:
    """Delete a downloaded model (or the built-in tiny, which is rebuilt on next use).

    Examples:

      v4 rm flash
    """
    from .. import hub
    from ..sizes import size

    c = console()
    with handled(c):
        freed = hub.remove(model)
        c.info(f"removed {model} ({size(freed)} freed)")
