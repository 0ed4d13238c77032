"""``hwprune export``: a run directory's models (or a bare registry model) -> validated ONNX + one record each.

Every exported ``X.onnx`` gets ``X.export.json`` beside it (``hwprune.training.artifacts.ExportRecord``,
one schema whichever way the model was exported), so exporting one model never replaces another's record.
"""

from __future__ import annotations

from pathlib import Path

import click

from hwprune.cli.modelopts import model_from_options, model_input_options

__all__ = ["COMMANDS", "export"]


@click.command("export")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_name", default=None, help="Export a bare registry model instead of a RUN_DIR.")
@click.option("--stage", default=None, help="RUN_DIR stage to export alone (dense, sparse, pruned, nm) [default: "
              "dense.onnx and model.onnx, the most processed stage].")
@model_input_options
@click.option("--out", "out_text", type=click.Path(dir_okay=False), default=None,
              help="ONNX path of one model (required with --model; with RUN_DIR: export one stage there, outside "
              "RUN_DIR); its record X.export.json goes beside it. Without it RUN_DIR is exported in place.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True)
@click.option("--atol", type=click.FloatRange(min=0), default=1e-5, show_default=True)
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--dynamic-batch/--no-dynamic-batch", default=True, show_default=True)
@click.option("--simplify/--no-simplify", default=False, show_default=True, help="Run onnxslim (outputs verified).")
@click.option("--dynamo/--no-dynamo", default=False, show_default=True, help="Use the torch.export-based exporter.")
@click.option("--json", "as_json", is_flag=True, help="Print the export record as JSON.")
def export(run_dir: Path | None, model_name: str | None, stage: str | None, num_classes: int, in_channels: int,
           input_size: int, out_text: str | None, force: bool, opset: int, atol: float, rtol: float,
           dynamic_batch: bool, simplify: bool, dynamo: bool, as_json: bool) -> None:
    """Export RUN_DIR's models (or --model NAME) to ONNX, check them and compare ORT with PyTorch.

    The input options (--input-size, --in-channels, --num-classes, --data) apply to --model only.
    The parameters are the command's options (click passes each one).
    """
    from hwprune.base.errors import ConfigError
    from hwprune.base.outpath import check_out_file
    from hwprune.pipeline.steps import export_model
    from hwprune.runtime.export import ExportConfig
    from hwprune.training.artifacts import ExportRecord

    if (run_dir is None) == (model_name is None):
        raise ConfigError("give exactly one of RUN_DIR or --model NAME")
    out = None if out_text is None else check_out_file(out_text, replace=force)  # a trailing / is refused
    if out is not None:
        check_out_file(ExportRecord.path_for(out), replace=True)
    cfg = ExportConfig(opset=opset, dynamic_batch=dynamic_batch, atol=atol, rtol=rtol, dynamo=dynamo,
                       simplify=simplify)
    if run_dir is not None:
        from hwprune.pipeline.steps import open_run, step_export
        from hwprune.training.rundir import STAGES

        rd = open_run(run_dir)
        if stage is not None and stage not in STAGES:
            raise ConfigError(f"--stage {stage!r}: valid stages are {', '.join(STAGES)}")
        if out is None:  # in place: dense.onnx + model.onnx (or the one stage), one record each
            rec = step_export(rd, config=cfg, stage=stage)
            _echo(rec, rd.onnx_path_of(rec.stage or "dense"), atol, rtol, as_json,
                  also=None if stage is not None else rd.onnx_path("dense"))
            return
        if out.resolve().parent == rd.root.resolve():
            raise ConfigError(f"--out {out}: inside {rd.root}; omit --out to export the run in place "
                              "(with --stage for one stage), or write elsewhere")
        source_stage = stage or rd.final_stage()
        model, example = rd.load_model(source_stage)[0], rd.example_input()
        source = f"run {rd.root}"
    else:
        assert model_name is not None  # exactly one of the two is given (checked above)
        if out is None:
            raise ConfigError("--out PATH is required with --model")
        model, example = model_from_options(model_name, input_size=input_size, in_channels=in_channels,
                                            num_classes=num_classes)
        source, source_stage = f"model {model_name}", None
    rec = export_model(model, example, out, cfg, source=source, stage=source_stage)
    _echo(rec, out, atol, rtol, as_json)


def _echo(rec: object, path: Path, atol: float, rtol: float, as_json: bool, also: Path | None = None) -> None:
    from hwprune.cli.console import echo_json
    from hwprune.training.artifacts import ExportRecord

    assert isinstance(rec, ExportRecord)
    if as_json:
        echo_json(rec.to_dict())
        return
    r = rec.report
    extra = f" (and dense -> {also})" if also is not None else ""
    click.echo(f"exported {rec.stage or rec.source} -> {path}{extra} (opset {r['opset']}, {r['num_nodes']} nodes); "
               f"max abs diff {r['max_abs_diff']:.3g}, max rel diff {r['max_rel_diff']:.3g} (atol {atol:g}, "
               f"rtol {rtol:g}); record: {ExportRecord.path_for(path)}")


COMMANDS: list[click.Command] = [export]
