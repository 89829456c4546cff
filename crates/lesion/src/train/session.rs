//! The training loop: epochs of Adam steps in train mode, validation in eval mode, the
//! best and last checkpoints, history, curves and early stopping; and resuming, with the
//! options that may change then ([`ResumeOptions`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::classes::Classes;
use crate::device::{describe, parse_device};
use crate::infer::{predict_split, SplitPredictions};
use crate::loader::{LoaderOptions, PreparedDataset};
use crate::loss::{self, Loss};
use crate::model::{self, ResNet18};
use crate::optim::{Adam, LrSchedule, ParamGroup, Schedule};
use crate::run::checkpoint::{self, ScheduleSteps, TrainState};
use crate::run::config::ClassWeights;
use crate::run::history::{self, EpochRecord};
use crate::run::{
    Monitor, RunConfig, TrainConfig, BEST_FILE, CONFIG_FILE, CURVES_FILE, HISTORY_FILE, LAST_FILE,
    MIN_IMAGE_SIZE,
};
use crate::split::Split;
use crate::train::feature_cache::{FeatureCache, TrainBatches};
use crate::weights::{self, WeightsSource};
use crate::{metrics, run, Error, Result};

/// What a finished (or early-stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub monitor: Monitor,
    /// Epochs completed in total (resumed runs included).
    pub epochs_completed: usize,
    pub best_epoch: usize,
    pub best_metric: f64,
    pub stopped_early: bool,
    pub history: Vec<EpochRecord>,
}

impl fmt::Display for TrainSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.stopped_early {
            "stopped early"
        } else {
            "finished"
        };
        writeln!(
            f,
            "training {how} after {} epochs; best {} = {:.4} at epoch {}",
            self.epochs_completed, self.monitor, self.best_metric, self.best_epoch
        )?;
        if let Some(best) = self.history.iter().find(|r| r.epoch == self.best_epoch) {
            writeln!(
                f,
                "best epoch: val_loss {:.4}, val_acc {:.4}, val_balanced_acc {:.4}, val_auc {:.4}",
                best.val_loss, best.val_acc, best.val_balanced_acc, best.val_auc
            )?;
        }
        write!(f, "run folder: {}", self.run_dir.display())
    }
}

/// Starts a new run as described by `cfg` and trains it to the end.
pub fn train(cfg: &TrainConfig, progress: bool) -> Result<TrainSummary> {
    cfg.validate()?;
    // Everything that can fail on bad input is checked before the run folder exists.
    let data = open_data(&cfg.data, cfg.fold)?;
    let device = parse_device(&cfg.device)?;
    let source: WeightsSource = cfg.weights.parse()?;
    let weights_path = weights::resolve(&source, progress)?;
    let identity = weights::identify(&source, weights_path.as_deref())?;

    let mut session = Session::new(cfg.clone(), data, device, progress)?;
    model::init_seeded(&session.varmap, cfg.seed)?;
    if let Some(path) = &weights_path {
        model::load_state_dict(&session.varmap, weights::load_safetensors(path)?, true)?;
    }

    // Absolute, so that `--resume` works from any working directory.
    let cfg = &mut session.cfg;
    cfg.data = std::fs::canonicalize(&cfg.data).unwrap_or_else(|_| cfg.data.clone());
    let data = &session.data;
    let run_cfg = RunConfig {
        manifest_sha256: crate::manifest::manifest_sha256(data.dir())?,
        class_names: data.class_names().to_vec(),
        malignant: data.manifest().malignant.clone(),
        image_size: data.image_size() as usize,
        resize: Some(data.manifest().resize),
        mean: data.manifest().normalization.mean,
        std: data.manifest().normalization.std,
        weights_source: match &identity.hub_repo {
            Some(repo) => format!("{source} ({repo})"),
            None => source.to_string(),
        },
        weights_sha256: identity.sha256.clone(),
        device: describe(&session.device),
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        train: cfg.clone(),
    };
    run::create(&cfg.out, cfg.force, &[&cfg.data])?;
    run::write_config(&cfg.out, &run_cfg)?;
    // What the training images look like, for the drift warnings of eval, predict, serve.
    if let Some(profile) = crate::drift::InputProfile::of_prepared(data)? {
        profile.write(&cfg.out)?;
    }
    session.run()
}

/// The options that may change when a run is resumed; `None` keeps the run's value. Every
/// other option is fixed by the run's `config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeOptions {
    /// A new epoch limit (the total, not a number of further epochs).
    pub epochs: Option<usize>,
    pub patience: Option<usize>,
    pub lr_head: Option<f64>,
    pub lr_layer4: Option<f64>,
    pub lr_layer3: Option<f64>,
    pub lr_backbone: Option<f64>,
    /// Where training continues (`auto`, `cpu`, `cuda[:N]`, `metal`).
    pub device: Option<String>,
}

impl ResumeOptions {
    /// Sets the given options in `cfg`; one `--option old -> new` per value that changed.
    fn apply(&self, cfg: &mut TrainConfig) -> Vec<String> {
        fn set<T: PartialEq + fmt::Display + Clone>(
            changes: &mut Vec<String>,
            option: &str,
            field: &mut T,
            new: &Option<T>,
        ) {
            if let Some(new) = new {
                if field != new {
                    changes.push(format!("{option} {field} -> {new}"));
                    *field = new.clone();
                }
            }
        }
        let mut changes = Vec::new();
        set(&mut changes, "--epochs", &mut cfg.epochs, &self.epochs);
        set(
            &mut changes,
            "--patience",
            &mut cfg.patience,
            &self.patience,
        );
        set(&mut changes, "--lr-head", &mut cfg.lr_head, &self.lr_head);
        set(
            &mut changes,
            "--lr-layer4",
            &mut cfg.lr_layer4,
            &self.lr_layer4,
        );
        set(
            &mut changes,
            "--lr-layer3",
            &mut cfg.lr_layer3,
            &self.lr_layer3,
        );
        set(
            &mut changes,
            "--lr-backbone",
            &mut cfg.lr_backbone,
            &self.lr_backbone,
        );
        set(&mut changes, "--device", &mut cfg.device, &self.device);
        changes
    }

    /// The learning rates given, by optimizer group.
    fn lrs(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        [
            ("head", self.lr_head),
            ("layer4", self.lr_layer4),
            ("layer3", self.lr_layer3),
            ("backbone", self.lr_backbone),
        ]
        .into_iter()
        .filter_map(|(group, lr)| lr.map(|lr| (group, lr)))
    }
}

/// Continues the run in `run_dir` from its `last.safetensors`, with the changes `opts`
/// allows (recorded in its `config.json`, and per epoch in `history.csv`'s learning-rate
/// columns). Without changes, on CPU, the result is identical to an uninterrupted run.
///
/// `history.csv` and `curves.png` are first made to follow the checkpoint: rows of epochs
/// after it (whose checkpoint was never written) are dropped, and the checkpoint's own row is
/// restored when the history lacks it. A `best.safetensors` without `last.safetensors` (a
/// kill while the first epoch was being saved) is the resume point.
pub fn resume(run_dir: &Path, opts: &ResumeOptions, progress: bool) -> Result<TrainSummary> {
    let mut run_cfg = run::read_config(run_dir)?;
    crate::fsutil::remove_stale_temps(run_dir);
    let schedule = run_cfg.train.schedule;
    if let Some(e) = opts.epochs.filter(|&e| e != run_cfg.train.epochs) {
        if schedule != Schedule::Constant {
            return Err(Error::InvalidOption(format!(
                "--epochs {e} cannot be given when resuming {}: its --schedule {schedule} is \
                 laid out over the {} epochs it started with (start a new run to train longer)",
                run_dir.display(),
                run_cfg.train.epochs
            )));
        }
    }
    let changes = opts.apply(&mut run_cfg.train);
    let mut cfg = run_cfg.train.clone();
    cfg.out = run_dir.to_path_buf();
    cfg.validate()?;
    let data = open_data(&cfg.data, cfg.fold)?;
    if crate::manifest::manifest_sha256(data.dir())? != run_cfg.manifest_sha256 {
        return Err(Error::BadArtifact {
            path: cfg.data.clone(),
            reason: format!(
                "the prepared dataset changed since the run in {} started (manifest hash differs)",
                run_dir.display()
            ),
        });
    }
    let device = parse_device(&cfg.device)?;
    let mut session = Session::new(cfg.clone(), data, device, progress)?;

    let last = resume_point(run_dir)?;
    let (tensors, mut state) = checkpoint::load(&last, &session.device)?;
    set_vars(&session.varmap, &tensors, &last)?;
    session.opt.load_state(&tensors)?;
    for (group, lr) in opts.lrs() {
        // A group the run does not train (the backbone unless `--trainable all`) has no
        // optimizer group; its rate is only recorded.
        if session.opt.groups().iter().any(|g| g.name == group) {
            session.opt.set_lr(group, lr)?;
        }
    }
    if opts.patience.is_some() {
        state.finished =
            state.epochs_without_improvement >= cfg.patience && state.epoch < cfg.epochs;
    }
    let steps = session.schedule_steps();
    if state.schedule.is_some() && state.schedule != steps {
        return Err(Error::BadArtifact {
            path: last,
            reason: format!(
                "the checkpoint's learning-rate schedule has {:?} steps, this run now {:?} \
                 (the schedule cannot change mid-run)",
                state.schedule, steps
            ),
        });
    }
    state.schedule = steps;
    session.history = history_for_checkpoint(run_dir, &state)?;
    session.state = state;
    if last.file_name() != Some(LAST_FILE.as_ref()) {
        // The folder then shows the resume point where the next run looks for it.
        let bytes = std::fs::read(&last).map_err(|e| Error::io(&last, e))?;
        crate::fsutil::write_atomic(run_dir.join(LAST_FILE), &bytes)?;
    }
    session.write_history()?;

    if !changes.is_empty() {
        run::write_config(run_dir, &run_cfg)?;
        eprintln!(
            "resuming {} after epoch {} with {} (recorded in {CONFIG_FILE})",
            run_dir.display(),
            session.state.epoch,
            changes.join(", ")
        );
    }
    session.run()
}

/// The checkpoint a run resumes from: `last.safetensors`, or `best.safetensors` when only it
/// exists (it is written just before `last.safetensors`, so it is then the newest).
fn resume_point(run_dir: &Path) -> Result<PathBuf> {
    let last = run_dir.join(LAST_FILE);
    if last.is_file() {
        return Ok(last);
    }
    let best = run_dir.join(BEST_FILE);
    if best.is_file() {
        eprintln!(
            "{} is missing (the run was interrupted while saving its first epoch); resuming \
             from {}",
            last.display(),
            best.display()
        );
        return Ok(best);
    }
    let history = run_dir.join(HISTORY_FILE);
    let recorded = history::read(&history).map(|h| h.len()).unwrap_or(0);
    let reason = if recorded > 0 {
        format!(
            "no checkpoint to resume from: {HISTORY_FILE} records {recorded} epoch(s), but the \
             run was interrupted before their checkpoint was written, so none finished; start \
             the run again (--force replaces the folder)"
        )
    } else {
        "no checkpoint to resume from: the run did not finish an epoch; start it again \
         (--force replaces the folder)"
            .to_string()
    };
    Err(Error::BadArtifact { path: last, reason })
}

/// The history that goes with a checkpoint saved after epoch `state.epoch`: the rows of
/// `history.csv` up to it, plus the checkpoint's own row when `history.csv` lacks it. Rows of
/// later epochs (written before their checkpoint by an older `lesion`) are dropped, as
/// those epochs are trained again.
fn history_for_checkpoint(run_dir: &Path, state: &TrainState) -> Result<Vec<EpochRecord>> {
    let path = run_dir.join(HISTORY_FILE);
    let mut rows = if path.exists() {
        history::read(&path)?
    } else {
        Vec::new()
    };
    if rows.len() > state.epoch {
        eprintln!(
            "{} records {} epochs but the checkpoint was saved after epoch {} (the run was \
             interrupted while saving): the later rows are dropped and those epochs trained \
             again",
            path.display(),
            rows.len(),
            state.epoch
        );
        rows.truncate(state.epoch);
    }
    if rows.len() + 1 == state.epoch {
        if let Some(record) = state.record.as_ref().filter(|r| r.epoch == state.epoch) {
            rows.push(record.clone());
        }
    }
    let follows = rows.len() == state.epoch && rows.iter().zip(1..).all(|(r, e)| r.epoch == e);
    if !follows {
        return Err(Error::BadArtifact {
            path,
            reason: format!(
                "records epochs {:?} but the checkpoint was saved after epoch {}",
                rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
                state.epoch
            ),
        });
    }
    Ok(rows)
}

/// Opens and verifies a prepared dataset (with `fold` selected, for K-fold data) and checks
/// that the model can take its images.
fn open_data(dir: &Path, fold: Option<u32>) -> Result<PreparedDataset> {
    let data = PreparedDataset::open_fold(dir, fold)?;
    data.verify()?;
    if data.image_size() < MIN_IMAGE_SIZE {
        return Err(Error::BadArtifact {
            path: dir.to_path_buf(),
            reason: format!(
                "images are {0}x{0} px; ResNet-18 needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} \
                 (prepare again with a larger --size)",
                data.image_size()
            ),
        });
    }
    for split in [Split::Train, Split::Val] {
        if data.len(split) == 0 {
            return Err(Error::BadArtifact {
                path: dir.to_path_buf(),
                reason: format!("the {} split is empty", split.name()),
            });
        }
    }
    Ok(data)
}

/// One Adam group per trainable part, with that part's learning rate.
fn build_optimizer(varmap: &VarMap, cfg: &TrainConfig) -> Result<Adam> {
    let groups = model::trainable_vars(varmap, cfg.trainable)?
        .into_iter()
        .map(|(name, params)| ParamGroup {
            name: name.to_string(),
            lr: group_lr(cfg, name),
            params,
        })
        .collect();
    Adam::new(groups)
}

fn group_lr(cfg: &TrainConfig, group: &str) -> f64 {
    match group {
        "head" => cfg.lr_head,
        "layer4" => cfg.lr_layer4,
        "layer3" => cfg.lr_layer3,
        _ => cfg.lr_backbone,
    }
}

/// Copies checkpoint tensors into the model's variables (running statistics included).
fn set_vars(varmap: &VarMap, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| Error::BadArtifact {
            path: path.to_path_buf(),
            reason: format!("checkpoint lacks tensor `{name}`"),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::BadArtifact {
                path: path.to_path_buf(),
                reason: format!(
                    "`{name}` has shape {:?}, the model {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(t)?;
    }
    Ok(())
}

/// Dropout masks of epoch `e` come from a stream derived from (seed, e), so a resumed run
/// draws the same masks as an uninterrupted one.
fn dropout_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The loss weights `cfg.class_weights` asks for, from the train split's class counts.
fn class_weights(cfg: &TrainConfig, data: &PreparedDataset) -> Result<Option<Vec<f64>>> {
    match cfg.class_weights {
        ClassWeights::None => Ok(None),
        ClassWeights::Balanced => {
            let counts = data.class_counts(Split::Train);
            if let Some(k) = counts.iter().position(|&c| c == 0) {
                return Err(Error::BadArtifact {
                    path: data.dir().to_path_buf(),
                    reason: format!(
                        "--class-weights balanced needs every class in the train split; `{}` \
                         has no image there",
                        data.class_names()[k]
                    ),
                });
            }
            loss::balanced_class_weights(&counts).map(Some)
        }
    }
}

struct Session {
    cfg: TrainConfig,
    data: PreparedDataset,
    classes: Classes,
    loss: Loss,
    /// `None` for the constant schedule, which leaves the optimizer's rates alone.
    schedule: Option<LrSchedule>,
    device: Device,
    varmap: VarMap,
    model: ResNet18,
    opt: Adam,
    state: TrainState,
    history: Vec<EpochRecord>,
    progress: bool,
    cache: Option<FeatureCache>,
}

impl Session {
    /// A model (parameters as candle initialises them), its optimizer and a fresh state.
    fn new(
        cfg: TrainConfig,
        data: PreparedDataset,
        device: Device,
        progress: bool,
    ) -> Result<Self> {
        let classes = data.classes()?;
        let varmap = VarMap::new();
        let mut model = ResNet18::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
            cfg.head_dropout as f32,
            classes.outputs(),
        )?;
        model.set_trainable(cfg.trainable);
        model.set_freeze_bn(cfg.freeze_bn);
        let cache = FeatureCache::for_run(&cfg);
        let opt = build_optimizer(&varmap, &cfg)?;
        let weights = class_weights(&cfg, &data)?;
        if let Some(w) = &weights {
            let w: Vec<String> = w.iter().map(|w| format!("{w:.4}")).collect();
            eprintln!("class weights (balanced): {}", w.join(", "));
        }
        let schedule = match cfg.schedule {
            Schedule::Constant => None,
            kind => Some(LrSchedule::new(
                kind,
                cfg.epochs,
                data.len(Split::Train).div_ceil(cfg.batch_size),
                cfg.warmup_epochs,
            )?),
        };
        let mut state = TrainState::new(cfg.seed, cfg.monitor.worst());
        state.schedule = schedule.map(|s| ScheduleSteps {
            steps_per_epoch: s.total_steps() / cfg.epochs,
            total_steps: s.total_steps(),
        });
        Ok(Session {
            loss: Loss::new(&classes, weights, cfg.label_smoothing)?,
            schedule,
            cfg,
            data,
            classes,
            device,
            varmap,
            model,
            opt,
            state,
            history: Vec::new(),
            progress,
            cache,
        })
    }

    fn run(mut self) -> Result<TrainSummary> {
        // The ops choose their path on this thread, which runs every step and validation.
        let _tiles = crate::kernels::training_4x4(self.cfg.winograd_4x4);
        let out = self.cfg.out.clone();
        let mut stopped_early = self.state.finished;
        if !stopped_early && self.state.epoch < self.cfg.epochs {
            eprintln!(
                "training on {}{} ({} train / {} val images, {}x{} px), trainable: {}, run: {}",
                describe(&self.device),
                if self.cfg.winograd_4x4 {
                    ", Winograd 4x4 in training"
                } else {
                    ""
                },
                self.data.len(Split::Train),
                self.data.len(Split::Val),
                self.data.image_size(),
                self.data.image_size(),
                self.cfg.trainable,
                out.display()
            );
        }
        while !stopped_early && self.state.epoch < self.cfg.epochs {
            let (record, val) = self.epoch()?;
            let value = match self.cfg.monitor {
                Monitor::ValAcc => record.val_acc,
                Monitor::ValLoss => record.val_loss,
                Monitor::ValAuc => record.val_auc,
                Monitor::ValBalancedAcc => record.val_balanced_acc,
            };
            let improved = self.cfg.monitor.improves(value, self.state.best_metric);
            self.state.epoch = record.epoch;
            if improved {
                self.state.best_metric = value;
                self.state.best_epoch = record.epoch;
                self.state.epochs_without_improvement = 0;
            } else {
                self.state.epochs_without_improvement += 1;
            }
            stopped_early = self.state.epochs_without_improvement >= self.cfg.patience
                && self.state.epoch < self.cfg.epochs;
            self.state.finished = stopped_early;
            eprintln!(
                "epoch {:>3}/{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} \
                 bal acc {:.4} auc {:.4} | {:.1} img/s, {:.0} s{}",
                record.epoch,
                self.cfg.epochs,
                record.train_loss,
                record.train_acc,
                record.val_loss,
                record.val_acc,
                record.val_balanced_acc,
                record.val_auc,
                record.images_per_s,
                record.seconds,
                if improved { " *best*" } else { "" }
            );
            self.history.push(record);
            self.save(improved, &val)?;
            if stopped_early {
                eprintln!(
                    "early stopping: no {} improvement for {} epochs",
                    self.cfg.monitor, self.cfg.patience
                );
            }
        }
        if let Some(cache) = &self.cache {
            cache.remove();
        }
        Ok(TrainSummary {
            run_dir: out,
            monitor: self.cfg.monitor,
            epochs_completed: self.state.epoch,
            best_epoch: self.state.best_epoch,
            best_metric: self.state.best_metric,
            stopped_early,
            history: self.history,
        })
    }

    /// One epoch of training followed by validation: its history row and the validation
    /// predictions.
    fn epoch(&mut self) -> Result<(EpochRecord, SplitPredictions)> {
        let epoch = self.state.epoch; // 0-based index of the epoch being run
        let start = Instant::now();
        let n_train = self.data.len(Split::Train);
        let pb = self.bar(
            n_train as u64,
            format!("epoch {}/{}", epoch + 1, self.cfg.epochs),
        );
        self.model
            .set_dropout_seed(dropout_seed(self.cfg.seed, epoch));
        let opts = LoaderOptions::train(self.cfg.batch_size, self.cfg.seed, epoch as u64)
            .with_sampler(self.cfg.sampler);
        let steps_per_epoch = n_train.div_ceil(self.cfg.batch_size);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let batches = TrainBatches::new(
            self.cache.as_mut(),
            &self.data,
            &self.model,
            &self.varmap,
            opts,
            &self.device,
        )?;
        for (step, batch) in batches.enumerate() {
            let batch = batch?;
            if let Some(schedule) = self.schedule {
                self.schedule_lrs(&schedule, epoch * steps_per_epoch + step)?;
            }
            // Train-mode BatchNorm needs two values per channel; at small image sizes a
            // trailing batch of one image has a single value in layer4. Shuffling puts a
            // different image there each epoch.
            if batch.len() < 2 && step > 0 {
                continue;
            }
            let logits = self.model.forward_from(
                batch.stage,
                &batch.input,
                true,
                Some(self.cfg.trainable),
            )?;
            let loss = self.loss.forward(&logits, &batch.label_u8)?;
            let loss_value = loss.to_scalar::<f32>()?;
            if !loss_value.is_finite() {
                pb.abandon();
                return Err(Error::Diverged {
                    run: self.cfg.out.clone(),
                    epoch: epoch + 1,
                    step: step + 1,
                    value: loss_value,
                    saved_epoch: (self.state.epoch > 0).then_some(self.state.epoch),
                });
            }
            let grads = loss.backward()?;
            self.opt.step(&grads)?;
            let b = batch.len();
            let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            let k = self.classes.outputs();
            correct += logits
                .chunks(k)
                .zip(&batch.label_u8)
                .filter(|(row, &y)| Self::predicted_class(row) == usize::from(y))
                .count();
            loss_sum += f64::from(loss_value) * b as f64;
            seen += b;
            pb.inc(b as u64);
            let secs = start.elapsed().as_secs_f64();
            pb.set_message(format!(
                "loss {:.4} acc {:.3} {:.1} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / secs
            ));
        }
        let train_secs = start.elapsed().as_secs_f64();
        pb.finish_and_clear();

        let val = self.validate()?;
        let lrs: HashMap<String, f64> = self.opt.lrs().into_iter().collect();
        let lr = |g: &str| lrs.get(g).copied().unwrap_or(0.0);
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss: val.mean_loss(),
            val_acc: val.accuracy(metrics::DEFAULT_THRESHOLD),
            val_auc: val.auc().unwrap_or(f64::NAN),
            val_balanced_acc: super::monitor::val_balanced_accuracy(&val),
            lr_head: lr("head"),
            lr_layer4: lr("layer4"),
            lr_layer3: lr("layer3"),
            lr_backbone: lr("backbone"),
            seconds: start.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_secs,
        };
        Ok((record, val))
    }

    /// Sets every group's rate to the schedule's rate at `step` (0-based, over the run).
    fn schedule_lrs(&mut self, schedule: &LrSchedule, step: usize) -> Result<()> {
        let groups: Vec<(String, f64)> = self
            .opt
            .groups()
            .iter()
            .map(|g| (g.name.clone(), group_lr(&self.cfg, &g.name)))
            .collect();
        for (name, base) in groups {
            self.opt.set_lr(&name, schedule.lr(base, step))?;
        }
        Ok(())
    }

    /// The schedule's length, as the train state records it.
    fn schedule_steps(&self) -> Option<ScheduleSteps> {
        self.schedule.map(|s| ScheduleSteps {
            steps_per_epoch: s.total_steps() / self.cfg.epochs,
            total_steps: s.total_steps(),
        })
    }

    /// The class a row of training logits predicts: the positive class when its logit is
    /// non-negative (one logit), else the largest logit.
    fn predicted_class(row: &[f32]) -> usize {
        match row {
            [x] => usize::from(*x >= 0.0),
            _ => row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &x)| if x > row[best] { i } else { best }),
        }
    }

    /// Eval-mode predictions on the validation split from a detached view of the weights.
    fn validate(&mut self) -> Result<SplitPredictions> {
        let mut eval_model = ResNet18::from_tensors(
            self.model_tensors(),
            &self.device,
            self.cfg.head_dropout as f32,
            self.classes.outputs(),
        )?;
        // Frozen BatchNorm runs the frozen stages image by image, as the feature cache does.
        eval_model.set_trainable(self.cfg.trainable);
        eval_model.set_freeze_bn(self.cfg.freeze_bn);
        if let Some(cache) = self.cache.as_mut() {
            return cache.predict_val(
                &self.data,
                &self.model,
                &eval_model,
                &self.varmap,
                &self.classes,
                &self.device,
            );
        }
        let pb = self.bar(self.data.len(Split::Val) as u64, "validation".into());
        let preds = predict_split(
            &eval_model,
            &self.classes,
            &self.data,
            Split::Val,
            self.cfg.batch_size,
            false,
            &self.device,
            Some(&pb),
        )?;
        pb.finish_and_clear();
        Ok(preds)
    }

    /// The model's state dict (running statistics included), sharing the variables' storage.
    fn model_tensors(&self) -> HashMap<String, Tensor> {
        let data = self.varmap.data().lock().expect("varmap lock");
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Writes checkpoints, history and curves for the epoch just finished (`val`: its
    /// validation predictions). Order matters for resuming: the checkpoints come first, so
    /// that the history never shows an epoch that cannot be resumed from, and carry the
    /// epoch's history row, so that resuming can restore it after a kill before the history
    /// was written.
    fn save(&mut self, improved: bool, val: &SplitPredictions) -> Result<()> {
        let out = &self.cfg.out;
        // The row holds what history.csv records and nothing that differs between identical
        // runs, so that two such runs write identical checkpoints.
        let balanced_acc = self.cfg.records_balanced_accuracy(&self.classes);
        self.state.record = self.history.last().map(|r| EpochRecord {
            val_balanced_acc: if balanced_acc {
                r.val_balanced_acc
            } else {
                f64::NAN
            },
            seconds: f64::NAN,
            images_per_s: f64::NAN,
            ..r.clone()
        });
        let mut tensors = self.model_tensors();
        tensors.extend(self.opt.state_tensors()?);
        if improved {
            // The best checkpoint carries the validation predictions it was selected on, so
            // that lesion-eval can choose its threshold without another validation pass.
            let mut best = tensors.clone();
            best.extend(val.to_val_tensors()?);
            checkpoint::save(&out.join(BEST_FILE), &best, &self.state)?;
        }
        checkpoint::save(&out.join(LAST_FILE), &tensors, &self.state)?;
        self.write_history()
    }

    /// Writes `history.csv` and `curves.png` for the epochs in `self.history`.
    fn write_history(&self) -> Result<()> {
        let out = &self.cfg.out;
        let balanced_acc = self.cfg.records_balanced_accuracy(&self.classes);
        history::write(&out.join(HISTORY_FILE), &self.history, balanced_acc)?;
        let col = |f: fn(&EpochRecord) -> f64| self.history.iter().map(f).collect::<Vec<_>>();
        crate::plot::training_curves(
            &col(|r| r.train_loss),
            &col(|r| r.val_loss),
            &col(|r| r.train_acc),
            &col(|r| r.val_acc),
            &out.join(CURVES_FILE),
        )
    }

    fn bar(&self, len: u64, prefix: String) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(prefix);
        pb
    }
}
