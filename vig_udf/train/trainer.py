"""The training function: fine-tune an image-text-to-text model on a training set with selected-token labels.

:func:`train_selected` is one function for every launch: called in-process (local CPU, one GPU), or on each
rank by pyspark's ``TorchDistributor`` or ``torchrun`` (the environment's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR`` decide). The loop is ``transformers.Trainer``'s; what is ours plugs into it:

- the data: :class:`~vig_udf.train.data.TrainSetStream`, each rank's share of the Parquet training set as
  a stream of ready batches built in the DataLoader's workers (labels from the stored token masks through
  the scorer's masking, plus end-of-turn tokens; sequences cut at ``max_length``), in the prompt format and
  image padding of the scores (or the base model's defaults); a prompt that writes no stop token after an
  answer is warned about (or refused, with ``require_end_of_turn``) before training starts;
- the loss (:class:`SelectiveTrainer.compute_loss`): the summed cross-entropy at the labelled positions only
  (:mod:`vig_udf.train.loss`), divided by the Trainer's ``num_items_in_batch``, the supervised tokens of the
  global batch (every rank, every accumulated forward pass), so that an optimizer step minimises the mean over
  exactly the supervised tokens of the step whatever the split into processes and accumulation steps; with
  token loss weights (a ``token_weight=vig`` selection) the token losses are weighted and ``num_items_in_batch``
  is the sum of the weights over the same global batch (:meth:`SelectiveTrainer.get_batch_samples`), so a step
  minimises the weighted mean;
- the run record (``<output_dir>/vig_run.json``): the settings that change the weights, the training set's
  identity, the number of processes and the precision; a resume with any of them different is refused,
  naming the difference;
- the metrics (:class:`MetricsToMlflow`): loss, learning rate, gradient norm, supervised and end-of-turn
  tokens, samples, skipped and truncated samples per logging window, sent to the run's MLflow run when a checkpoint is
  written (or at once when there are no checkpoints), so that after a kill and a resume every step is in
  the history exactly once.

Mixed precision (bf16 autocast over float32 weights), gradient checkpointing, gradient accumulation,
DataLoader workers, DDP or FSDP2 full sharding, checkpoints (model as safetensors, optimizer, scheduler and
RNG states loaded with ``weights_only=True``) and resume are the Trainer's, configured by
:func:`training_arguments`. Exact resume: the data order is a function of the seed and the step (see
:mod:`vig_udf.train.data`), the stream restarts at the checkpoint's step, and the Trainer restores the rest,
so the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from vig_udf.scoring import formats
from vig_udf.scoring.conversation import DEFAULT_IMAGE_PLACEMENT
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.train import parts as model_parts
from vig_udf.train.data import TrainSetStream, train_set_identity
from vig_udf.storage import Storage, model_folder
from vig_udf.train.loss import LabelledPositionsHead, core_model, selected_token_loss
from vig_udf.train.run_folder import CHECKPOINTS, RUN_RECORD, RunFolder, remove_local_copy
from vig_udf.train.settings import TrainSettings

log = logging.getLogger(__name__)
SKIPPED_FILE = "vig_skipped_samples.json"
TRUNCATED_FILE = "vig_truncated_samples.json"
StepCallback = Callable[[int, dict], None]
# counters summed over the ranks at each log (positions in SelectiveTrainer.window)
WINDOW = ("supervised_tokens", "samples", "end_of_turn_tokens", "realigned_samples")


def train_selected(settings: TrainSettings | dict, train_set: str, output_dir: str, *,
                   tracking: dict | None = None, on_step: StepCallback | None = None,
                   storage: Storage | None = None) -> dict:
    """Train ``settings.base_model`` on the rows of ``train_set``; the final model goes to ``<output_dir>/model``.

    ``train_set`` and ``output_dir`` are local paths or URIs (:mod:`vig_udf.train.run_folder`), reached through
    ``storage``. tracking: ``{"tracking_uri", "run_id"}`` and optionally ``"env"`` (credential variables for
    this process: executors do not have the driver's) and ``"log_model"``: rank 0 logs the metrics (and the final
    model) to that MLflow run, and logs a first metric at step 0 before loading anything, so that a tracking
    server it cannot reach fails the run in seconds (:class:`TrackingUnreachable`).
    on_step: called on rank 0 after every logged step with (step, metrics), before that step's checkpoint.
    Returns a summary on every rank: steps, the logged losses and their steps, supervised tokens (selected
    answer tokens plus end-of-turn tokens, counted once per visit), end-of-turn tokens, skipped samples,
    the samples cut at ``max_length`` and the supervised tokens they lost (each sample counted once), the
    prompt format, image padding and end-of-turn text trained with, the model folder (its URI for a remote
    output).
    """
    settings = TrainSettings.model_validate(settings)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    storage = storage or Storage()
    run = RunFolder(output_dir, storage)
    out = run.local
    client = connect_tracking(tracking, processes=world) if rank == 0 and tracking else None
    on_cpu = _device_type(settings) == "cpu"
    precision = settings.precision or ("float32" if on_cpu else "bfloat16")
    if settings.method == "lora" and settings.sharding == "fsdp":
        raise ValueError("method=lora with sharding=fsdp is not supported: LoRA trains few parameters, use "
                         "sharding=none (DDP), or full fine-tuning with fsdp")
    if settings.sharding == "fsdp" and on_cpu and settings.checkpoint_every:
        raise ValueError("FSDP on CPU processes cannot checkpoint (accelerate's FSDP2 state dict gathering does not "
                         "work on CPU tensors): set checkpoint_every=0, or train on GPUs")
    record = {"settings": settings.weight_settings(), "train_set": train_set_identity(train_set, storage),
              "processes": world, "precision": precision}
    checkpoint = _resume_point(run, settings, record)
    if checkpoint is None and (rank == 0 or (run.remote and int(os.environ.get("LOCAL_RANK", rank)) == 0)):
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)  # each machine's copy of a remote run: its own
    if rank == 0 and checkpoint is None:
        run.clear_checkpoints()
        run.write_record(record)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base_model = model_folder(settings.base_model, storage)
    processor = AutoProcessor.from_pretrained(base_model)
    if settings.chat_template is not None:  # the scores' template (see train_job.training_conventions)
        processor.chat_template = settings.chat_template
    model = AutoModelForImageTextToText.from_pretrained(base_model, dtype=torch.float32)
    prompt_format, image_pad = formats.checkpoint_defaults(model.config, processor, prompt_format=settings.prompt_format,
                                                           image_pad=settings.image_pad)
    # the trained model declares what it was trained with: scoring it later uses the same prompt by default
    setattr(model.config, formats.DECLARED, formats.declaration(prompt_format, image_pad))
    placement = settings.image_placement or DEFAULT_IMAGE_PLACEMENT
    end_of_turn = check_end_of_turn(InputBuilder(processor, image_placement=placement, prompt_format=prompt_format,
                                                 image_pad=image_pad), settings, rank)
    counts = model_parts.set_trainable(model, **settings.train.model_dump())
    if settings.method == "lora":
        from transformers import set_seed

        set_seed(settings.seed)  # the adapters' random init: the same in every run of these settings
        model = with_lora(model, settings)
    stream = TrainSetStream(train_set, processor, batch_size=settings.batch_size, seed=settings.seed, rank=rank,
                            world=world, image_root=settings.image_root, max_length=settings.max_length,
                            supervise_end_of_turn=settings.supervise_end_of_turn,
                            cache_examples=settings.cache_examples, image_placement=placement,
                            prompt_format=prompt_format, image_pad=image_pad, storage=storage)
    args = training_arguments(settings, out, precision=precision, processes=world,
                              fsdp_layers=settings.fsdp_layers or fsdp_units(model))
    trainer = SelectiveTrainer(model=model, args=args, train_dataset=stream, processing_class=processor,
                               callbacks=[LogTheLastStep(), MetricsToMlflow(client, tracking, settings.checkpoint_every > 0,
                                                                            on_step),
                                          PublishCheckpoints(run, rank, world, settings.keep_checkpoints)])
    trainer.remove_callback(PrinterCallback)  # metrics go to the log and MLflow, not to stdout
    start = 0
    if checkpoint is not None:
        start = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        stream.start_batch = start * settings.gradient_accumulation_steps
        trainer.skipped = json.loads((checkpoint / SKIPPED_FILE).read_text())
        if (checkpoint / TRUNCATED_FILE).exists():
            trainer.truncated = json.loads((checkpoint / TRUNCATED_FILE).read_text())
        log.info("resuming from %s (step %d)", checkpoint, start)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if rank == 0:
        log.info("training %s (%s) from step %d to %d on %d process(es), %s; parameters %s, trainable %d",
                 settings.base_model, settings.method, start + 1, settings.steps, world, settings.sharding, counts,
                 trainable)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    held = rank_memory(trainer)
    model_dir = out / "model"
    _save_final(trainer, processor, settings, model_dir, rank)
    model_uri = str(model_dir)
    if rank == 0:
        model_uri = run.publish(model_dir, "model")
        if settings.method == "lora":
            run.publish(model_dir.with_name("adapter"), "adapter")
        if client is not None and tracking.get("log_model"):
            client.log_artifacts(tracking["run_id"], str(model_dir), artifact_path="model")
    trainer.accelerator.wait_for_everyone()
    if run.remote:
        remove_local_copy(run)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"steps": settings.steps, "resumed_from_step": start, "losses": [h["loss"] for h in logs],
            "loss_steps": [h["step"] for h in logs],
            **{name: int(sum(h.get(name, 0) for h in logs)) for name in WINDOW},
            "skipped": dict(trainer.skipped), "truncated_samples": len(trainer.truncated),
            "truncated_tokens": int(sum(trainer.truncated.values())), "rows": stream.rows, "parameters": counts,
            "trainable_parameters": trainable, "model_dir": model_uri, "seconds": seconds,
            "supervise_end_of_turn": settings.supervise_end_of_turn, "end_of_turn_text": end_of_turn,
            "prompt_format": formats.format_name(prompt_format), "image_pad": image_pad, "processes": world,
            "max_rows_held": stream.max_rows_held, "rank_memory": held}


def check_end_of_turn(builder: InputBuilder, settings: TrainSettings, rank: int) -> str | None:
    """The end-of-turn text the prompt writes after an answer (what training supervises to teach stopping),
    or None; a prompt that writes none gets a warning, or an error with ``require_end_of_turn``."""
    texts = builder.end_of_turn_texts()
    if not settings.supervise_end_of_turn:
        return None
    if all(texts):
        return texts[-1]
    message = (f"the prompt ({formats.format_name(builder.format or formats.TEMPLATE)}) writes no stop token after "
               f"an answer (end-of-turn texts of a probe: {texts}), so training cannot teach the model to stop; use "
               "a prompt_format that ends answers with one (llava_v1 for LLaVA-1.5 and 1.6-vicuna) or a "
               "chat_template that writes the EOS token after each answer")
    if settings.require_end_of_turn:
        raise ValueError(message + " (require_end_of_turn=true)")
    if rank == 0:
        log.warning("%s; training goes on without end-of-turn supervision (require_end_of_turn=true fails here)",
                    message)
    return None


class SelectiveTrainer(Trainer):
    """``transformers.Trainer`` with the selective loss, the training-set stream and per-window counts."""

    # compute_loss divides by the tokens of the whole accumulated global batch: no further division
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the Trainer counts num_items_in_batch (labels != -100 over the accumulated batches, summed over the
        # ranks with average_tokens_across_devices) only for models that take loss kwargs; ours is the loss
        self.model_accepts_loss_kwargs = True
        self.head = LabelledPositionsHead(self.model)
        self.window = torch.zeros(len(WINDOW), dtype=torch.float64)
        self.new_skipped: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.new_truncated: dict[str, int] = {}
        self.truncated: dict[str, int] = {}  # sample id -> supervised tokens cut at max_length
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
            self._enable_fsdp_on_cpu()

    def _enable_fsdp_on_cpu(self) -> None:
        """accelerate switches FSDP on only for accelerator devices; on CPU processes (gloo: the tests, the
        memory benchmark) the plugin the arguments describe is installed here, the same FSDP2 code runs."""
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        self.is_fsdp_enabled = True

    def get_train_dataloader(self):
        """The stream's batches as they come: each rank reads its own shard (no accelerate re-sharding or
        dispatch from rank 0), built in ``dataloader_num_workers`` worker processes."""
        workers = self.args.dataloader_num_workers
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=None, num_workers=workers,
                                           pin_memory=self.args.dataloader_pin_memory,
                                           persistent_workers=workers > 0, prefetch_factor=2 if workers else None)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's accumulated batches and token count, replaced by the sum of the batches' loss weights
        (over the ranks too, as the Trainer sums its count): the weighted mean's divisor, the token count itself
        when every weight is 1. The stream puts ``label_weights`` in every batch, so every rank takes this path."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items is not None and batches and "label_weights" in batches[0]:
            num_items = sum(b["label_weights"].double().sum() for b in batches).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                num_items = self.accelerator.gather(num_items).sum()
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        weights = inputs.pop("label_weights", None)
        counts = torch.stack([labels.ne(-100).sum(), inputs.pop("n_samples"), inputs.pop("end_of_turn"),
                              inputs.pop("realigned")]).to(torch.float64)
        for entry in inputs.pop("skipped"):
            sample_id, reason = entry.split(": ", 1)
            self.new_skipped[sample_id] = reason
        for sample_id, cut in inputs.pop("truncated"):
            self.new_truncated[sample_id] = int(cut)
        if model.training:  # summed on the device: no host synchronisation per forward pass
            self.window = self.window.to(counts.device) + counts
        loss_sum = selected_token_loss(model, self.head, inputs, labels, weights)
        supervised = num_items_in_batch if num_items_in_batch is not None else (
            labels.ne(-100).sum() if weights is None else weights.sum())
        # DDP and FSDP average gradients over the ranks: times the number of processes gives sum / supervised
        loss = loss_sum / torch.clamp(torch.as_tensor(supervised, dtype=loss_sum.dtype, device=loss_sum.device),
                                      min=1) * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs:  # a training-window log (called on every rank): add the window's counts
            window = self.accelerator.reduce(self.window.to(self.args.device), reduction="sum").cpu()
            logs.update({name: float(v) for name, v in zip(WINDOW, window.tolist())})
            self.window = torch.zeros_like(self.window)
            for part in _gather_objects(self.new_skipped, self.accelerator.num_processes):
                self.skipped.update(part)
            for part in _gather_objects(self.new_truncated, self.accelerator.num_processes):
                self.truncated.update(part)
            self.new_skipped, self.new_truncated = {}, {}
            logs["skipped_samples"] = float(len(self.skipped))
            logs["truncated_samples"] = float(len(self.truncated))
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # the skipped samples so far, beside the checkpoint they belong to
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            (folder / TRUNCATED_FILE).write_text(json.dumps(self.truncated))
            (folder / SKIPPED_FILE).write_text(json.dumps(self.skipped))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        if _internal_call and not _is_peft(self.model):
            self._save_checkpoint_weights(output_dir)
        elif self.is_fsdp_enabled and self.args.use_cpu:
            # accelerate's FSDP2 full state dict offloads to CPU, which on CPU tensors leaves freed storage;
            # gather the full tensors without the offload (every rank takes part, rank 0 writes)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
            self._save(output_dir, state_dict=state)
        else:
            super().save_model(output_dir, _internal_call)

    def _save_checkpoint_weights(self, output_dir: str) -> None:
        """A checkpoint's weights under the model's own parameter names, which the Trainer's resume loads as
        they are (``save_pretrained`` writes some families, LLaVA among them, under their original checkpoint
        names, which the resume's plain ``load_state_dict`` would silently skip). safetensors: no pickle."""
        if self.is_fsdp_enabled:
            from accelerate.utils import save_fsdp_model

            if self.args.use_cpu:
                raise NotImplementedError("checkpoints of FSDP on CPU processes: accelerate's FSDP2 state dict "
                                          "gathering does not work on CPU tensors; set checkpoint_every=0")
            save_fsdp_model(self.accelerator.state.fsdp_plugin, self.accelerator, self.model_wrapped, output_dir)
            return
        if self.args.should_save:
            from safetensors.torch import save_model

            os.makedirs(output_dir, exist_ok=True)
            save_model(self.accelerator.unwrap_model(self.model), os.path.join(output_dir, "model.safetensors"),
                       metadata={"format": "pt"})


def _is_peft(model) -> bool:
    return hasattr(model, "get_base_model")


class LogTheLastStep(TrainerCallback):
    """Log at the last step (so that the window counts add up to the run's), and do not checkpoint there:
    the final model is saved right after."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
            control.should_save = False
        return control


class TrackingUnreachable(RuntimeError):
    """Rank 0 cannot log to the run's MLflow tracking server (credentials, network)."""


def connect_tracking(tracking: dict, *, processes: int):
    """An MLflow client for ``tracking`` (rank 0), proven by logging ``processes`` at step 0: a rank that cannot
    reach the server (executors do not have the driver's credentials) fails here, in seconds, not at the first
    checkpoint hours later. ``tracking["env"]`` (the driver's credential variables) is set in this process."""
    from mlflow.tracking import MlflowClient

    os.environ.update(tracking.get("env") or {})
    client = MlflowClient(tracking_uri=tracking["tracking_uri"])
    try:
        client.log_metric(tracking["run_id"], "processes", float(processes), step=0)
    except Exception as error:  # noqa: BLE001 - MLflow raises its own and requests' exceptions alike
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingUnreachable(
            f"the training process cannot log to MLflow run {tracking['run_id']} at {tracking['tracking_uri']}: "
            f"{first}. The ranks get the credential variables in mlflow.forward_env from the driver's environment "
            f"(forwarded now: {sorted(tracking.get('env') or {}) or 'none'}): set them there (on Databricks: "
            "DATABRICKS_HOST and DATABRICKS_TOKEN, or a service principal's DATABRICKS_CLIENT_ID/SECRET)") from None
    return client


class PublishCheckpoints(TrainerCallback):
    """Upload each checkpoint of a run whose output is on object storage (:mod:`vig_udf.train.run_folder`)."""

    def __init__(self, run: RunFolder, rank: int, world: int, keep: int | None):
        self.run, self.rank, self.world, self.keep = run, rank, world, keep

    def on_save(self, args, state, control, **kwargs):
        self.run.publish_checkpoint(state.global_step, rank=self.rank, world=self.world, keep=self.keep,
                                    barrier=_barrier)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class MetricsToMlflow(TrainerCallback):
    """Send the training logs to the MLflow run of ``tracking`` (rank 0), committed with the checkpoints.

    Logs wait until the next checkpoint is written (``on_save``) or the training ends: a killed run loses the
    steps after its last checkpoint, which the resumed run trains and logs again, so each step is logged
    exactly once. Without checkpoints (nothing to resume) they are sent at once.
    """

    def __init__(self, client, tracking: dict | None, commit_with_checkpoints: bool, on_step: StepCallback | None):
        self.client, self.run_id = client, (tracking or {}).get("run_id")
        self.commit_with_checkpoints = commit_with_checkpoints
        self.on_step = on_step
        self.pending: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"}
        self.pending.append((state.global_step, metrics))
        if not self.commit_with_checkpoints:
            self._flush()
        if self.on_step:
            self.on_step(state.global_step, metrics)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._flush()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._flush()

    def _flush(self) -> None:
        if self.client and self.pending:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for step, metrics in self.pending
                                                        for k, v in metrics.items()])
        self.pending = []


def fsdp_units(model) -> list[str]:
    """The model's ``_no_split_modules`` classes that it contains (its decoder and encoder layers): one FSDP unit
    each, so that one layer's parameters are gathered at a time."""
    present = {type(m).__name__ for m in core_model(model).modules()}
    return [name for name in (core_model(model)._no_split_modules or []) if name in present]


def training_arguments(settings: TrainSettings, out: Path, *, precision: str, processes: int,
                       fsdp_layers: list[str] | None = None) -> TrainingArguments:
    """The Trainer's arguments for ``settings``: what the library does for us, configured."""
    fsdp = settings.sharding == "fsdp"
    on_cpu = _device_type(settings) == "cpu"
    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, warmup_steps=settings.warmup_ratio, lr_scheduler_type="cosine",
        max_grad_norm=settings.max_grad_norm, seed=settings.seed, data_seed=settings.seed, optim="adamw_torch",
        bf16=precision == "bfloat16", use_cpu=on_cpu,
        # under FSDP its own activation checkpointing (the Trainer's would gather each layer once more)
        activation_checkpointing=settings.gradient_checkpointing and not fsdp,
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing and not fsdp
        else None,
        dataloader_num_workers=settings.dataloader_workers, dataloader_pin_memory=not on_cpu,
        logging_strategy="steps", logging_steps=logging_steps(settings),
        save_strategy="steps" if settings.checkpoint_every else "no", save_steps=settings.checkpoint_every or 500,
        save_total_limit=settings.keep_checkpoints, report_to="none", disable_tqdm=True,
        remove_unused_columns=False, ignore_data_skip=True, average_tokens_across_devices=True,
        # text-only batches leave the projector unused; DDP must not wait for its gradients
        ddp_find_unused_parameters=True if processes > 1 and not fsdp else None,
        ddp_backend="gloo" if on_cpu and processes > 1 else None,
        # FSDP2, full shard (parameters resharded after forward), one unit per layer of these classes
        fsdp=fsdp, fsdp_config={"version": 2, "reshard_after_forward": True,
                                "activation_checkpointing": settings.gradient_checkpointing,
                                "transformer_layer_cls_to_wrap": fsdp_layers or settings.fsdp_layers} if fsdp else None)


def logging_steps(settings: TrainSettings) -> int:
    """``log_every``, or about 50 logs per run, a divisor of ``checkpoint_every`` (each checkpoint then closes
    a logging window, so the logged counts of a resumed run add up)."""
    if settings.log_every:
        return settings.log_every
    target = max(1, math.ceil(settings.steps / 50))
    if not settings.checkpoint_every:
        return target
    return max(d for d in range(1, min(target, settings.checkpoint_every) + 1) if settings.checkpoint_every % d == 0)


def with_lora(model, settings: TrainSettings):
    """LoRA adapters on the language model's linear layers; the other parts that train (the projector, the
    vision tower when asked) are peft ``modules_to_save``: trained as full copies and saved in the adapter,
    so that the adapter alone turns the base model into the trained one."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(settings.lora.target_modules)
    lm_prefixes = "|".join(p.rstrip(".").replace(".", r"\.") for p, part in model_parts.PREFIXES
                           if part == model_parts.LANGUAGE_MODEL and p != "lm_head.")
    trained_outside = {model_parts.PROJECTOR: settings.train.projector,
                       model_parts.VISION_TOWER: settings.train.vision_tower}
    modules = dict(model.named_modules())
    to_save = [p.rstrip(".") for p, part in model_parts.PREFIXES
               if trained_outside.get(part) and p.endswith(".") and p.rstrip(".") in modules]
    bare = [n for n, p in model.named_parameters() if p.requires_grad and trained_outside.get(model_parts.part_of(n))
            and not any(n.startswith(m + ".") for m in to_save)]
    if bare:  # a parameter outside any module (LLaVA-NeXT's image_newline) cannot go into the adapter
        log.warning("LoRA: %s stay frozen (peft saves modules, not bare parameters)", bare)
    config = LoraConfig(r=settings.lora.r, lora_alpha=settings.lora.alpha, lora_dropout=settings.lora.dropout,
                        target_modules=rf"({lm_prefixes})\..*\.({names})", bias="none",
                        modules_to_save=to_save or None)
    peft_model = get_peft_model(model, config)
    if not settings.train.language_model:  # adapters only train the language model
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(False)
    return peft_model


def _device_type(settings: TrainSettings) -> str:
    if settings.device:
        return torch.device(settings.device).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def has_checkpoint(output_dir: str, storage: Storage | None = None) -> bool:
    """Whether ``output_dir`` (local or a URI) holds a complete checkpoint to resume from."""
    return bool(RunFolder(output_dir, storage).checkpoint_steps(required=(SKIPPED_FILE,)))


def _resume_point(run: RunFolder, settings: TrainSettings, record: dict) -> Path | None:
    """The newest checkpoint to resume from, as a folder on this machine (None: start over); refuses one
    written by a different run."""
    found = run.checkpoint_steps(required=(SKIPPED_FILE,)) if settings.resume else []
    if not found:
        return None
    previous = run.read_record()
    if previous is None:
        raise ValueError(f"{run.uri} holds checkpoints but no {RUN_RECORD} that says which run wrote them: use "
                         "another output folder, or resume=false to start over")
    changed = record_differences(previous, record)
    if changed:
        raise ValueError(f"{run.uri} holds a run that differs from this one in {', '.join(changed)} "
                         f"(then -> now: {changed}); use another output folder, or resume=false to start over")
    return run.fetch(found[-1])


def record_differences(previous: dict, current: dict, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (previous, current) for every leaf value that differs between two run records."""
    diff = {}
    for key in sorted(set(previous) | set(current)):
        a, b = previous.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff.update(record_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            diff[f"{prefix}{key}"] = (a, b)
    return diff


def rank_memory(trainer: Trainer) -> dict[str, int]:
    """Bytes of parameters and of optimizer state that this rank holds (its shards under FSDP)."""
    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = sum(local(p).numel() * local(p).element_size() for p in trainer.model_wrapped.parameters())
    state = sum(local(v).numel() * local(v).element_size() for s in trainer.optimizer.state.values()
                for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"parameter_bytes": int(params), "optimizer_state_bytes": int(state)}


def _gather_objects(obj, processes: int) -> list:
    if processes == 1:
        return [obj]
    import torch.distributed as dist

    parts = [None] * processes
    dist.all_gather_object(parts, obj)
    return parts


def _save_final(trainer: SelectiveTrainer, processor, settings: TrainSettings, model_dir: Path, rank: int) -> None:
    """The final model in Hugging Face layout, written to a temporary folder and renamed. With LoRA the
    adapter (with its modules_to_save) goes to ``<output_dir>/adapter`` and the merged model to ``model``."""
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if settings.method == "lora":
        if rank == 0:
            adapter = model_dir.with_name("adapter")
            trainer.model.save_pretrained(adapter)
            merged = trainer.model.merge_and_unload()
            core_model(merged).eval().to("cpu").save_pretrained(tmp)
            processor.save_pretrained(tmp)
    else:
        trainer.save_model(str(tmp))  # every rank takes part under FSDP; rank 0 writes model and processor
    trainer.accelerator.wait_for_everyone()
    if rank == 0:
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp, model_dir)
    trainer.accelerator.wait_for_everyone()
