"""``hwprune export``: a run directory's final model (or a bare registry model) -> validated ONNX + report."""

from __future__ import annotations

from pathlib import Path

import click

from hwprune.cli.modelopts import model_from_options, model_input_options

__all__ = ["COMMANDS", "export"]


@click.command("export")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_name", default=None, help="Export a bare registry model instead of a RUN_DIR.")
@click.option("--stage", default=None, help="RUN_DIR stage to export (default: the most processed one).")
@model_input_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX path of one model (required with --model; with RUN_DIR: export only that stage "
              "there, outside RUN_DIR); export_report.json goes next to it. Without it RUN_DIR is exported "
              "as the pipeline's export step does (dense.onnx, model.onnx, the run's export record).")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True)
@click.option("--atol", type=click.FloatRange(min=0), default=1e-5, show_default=True)
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--dynamic-batch/--no-dynamic-batch", default=True, show_default=True)
@click.option("--simplify/--no-simplify", default=False, show_default=True, help="Run onnxslim (outputs verified).")
@click.option("--dynamo/--no-dynamo", default=False, show_default=True, help="Use the torch.export-based exporter.")
def export(run_dir: Path | None, model_name: str | None, stage: str | None, num_classes: int, in_channels: int,
           input_size: int, out: Path | None, opset: int, atol: float, rtol: float, dynamic_batch: bool,
           simplify: bool, dynamo: bool) -> None:
    """Export RUN_DIR's final model (or --model NAME) to ONNX, check it and compare ORT with PyTorch.

    The input options (--input-size, --in-channels, --num-classes) apply to --model only. The
    parameters are the command's options (click passes each one).
    """
    from hwprune.base.errors import ConfigError
    from hwprune.runtime.export import ExportConfig, export_and_validate

    if (run_dir is None) == (model_name is None):
        raise ConfigError("give exactly one of RUN_DIR or --model NAME")
    cfg = ExportConfig(opset=opset, dynamic_batch=dynamic_batch, atol=atol, rtol=rtol, dynamo=dynamo,
                       simplify=simplify)
    if run_dir is not None:
        from hwprune.pipeline.steps import open_run, step_export

        rd = open_run(run_dir)
        if out is None:  # the run's own export step: dense.onnx, model.onnx and the run's export record
            rec = step_export(rd, config=cfg, stage=stage)
            r = rec.model
            click.echo(f"exported {rec.stage} -> {rd.onnx_path('final')} and dense -> {rd.onnx_path('dense')} "
                       f"(opset {r['opset']}, {r['num_nodes']} nodes); max abs diff {r['max_abs_diff']:.3g}, "
                       f"max rel diff {r['max_rel_diff']:.3g} (atol {atol:g}, rtol {rtol:g})")
            return
        if out.resolve().parent == rd.root.resolve():
            raise ConfigError(f"--out {out}: inside {rd.root}, its report would replace the run's export record; "
                              "omit --out to export the run, or write elsewhere")
        source = stage or rd.final_stage()
        model, example = rd.load_model(source)[0], rd.example_input()
    else:
        assert model_name is not None  # exactly one of the two is given (checked above)
        if out is None:
            raise ConfigError("--out PATH is required with --model")
        model, example = model_from_options(model_name, input_size=input_size, in_channels=in_channels,
                                            num_classes=num_classes)
        source = f"model {model_name}"
    report = export_and_validate(model, example, out, cfg, report_path=out.parent / "export_report.json")
    click.echo(f"exported {source} -> {out} (opset {report.opset}, {report.num_nodes} nodes); "
               f"max abs diff {report.max_abs_diff:.3g}, max rel diff {report.max_rel_diff:.3g} "
               f"(atol {atol:g}, rtol {rtol:g}); report: {out.parent / 'export_report.json'}")


COMMANDS: list[click.Command] = [export]
