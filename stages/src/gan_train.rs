//! The `gan_train` stage kind: trains the 3D GAN ([`covflow_models::train_gan`]) on cropped
//! studies, healthy against infected, with checkpoints in the task's work directory.
//!
//! ```yaml
//! gan:
//!   uses: gan_train
//!   needs: [crops]                       # crop stage: ct + lung (+ lesion), one grid
//!   with: {iterations: 200, width: 0.25, holdout: [study_0006, study_0007]}
//! ```

use std::path::Path;
use std::time::Instant;

use covflow_engine::{ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_models::{
    Adversary, GanData, GanFiles, GanRecipe, GanSample, NoiseAugment, conv_for,
    snapshot_iterations, snapshot_name, train_gan,
};
use serde::{Deserialize, Serialize};

use crate::masks::{Crop, infected_categories, read_crop, unknown_items, write};
use crate::{check_range, kernel_device, one_input};

/// The `gan_train` stage kind.
pub struct GanTrainStage;

/// The trained generator's weights (burn's binary record).
pub const WEIGHTS: &str = "generator";
/// The recipe, grid and split of a training (`GanInfo`).
pub const INFO: &str = "gan.json";
/// The folder of the generator's snapshots (`iteration-NNNNNN.bin`).
pub const SNAPSHOTS: &str = "snapshots";

/// The `with:` of a `gan_train` stage.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GanTrainParams {
    /// Categories trained as healthy.
    #[serde(default = "healthy")]
    pub healthy: Vec<String>,
    /// Categories trained as infected.
    #[serde(default = "infected_categories")]
    pub infected: Vec<String>,
    /// Items never trained on, kept for evaluation (recorded in gan.json).
    #[serde(default)]
    pub holdout: Vec<String>,
    /// Iterations (the original: 10 000).
    #[serde(default = "iterations")]
    pub iterations: usize,
    /// Volumes of each class per iteration (the original: 5–8).
    #[serde(default = "batch")]
    pub batch: usize,
    /// Filter counts × this; 1 is the reference model (7.9 M parameters).
    #[serde(default = "width")]
    pub width: f64,
    /// Adam learning rate of the generator.
    #[serde(default = "lr_generator")]
    pub lr_generator: f64,
    /// Adam learning rate of the discriminator.
    #[serde(default = "lr_discriminator")]
    pub lr_discriminator: f64,
    /// Multiplies the Perlin noise painted on healthy volumes.
    #[serde(default = "noise_amplitude")]
    pub noise_amplitude: f32,
    /// Seed of every random draw.
    #[serde(default)]
    pub seed: u64,
    /// Iterations between checkpoints.
    #[serde(default = "checkpoint_every")]
    pub checkpoint_every: usize,
    /// Iterations between snapshots of the generator under snapshots/ (and one before the
    /// first iteration and one after the last), the points of a gan_curve stage's learning
    /// curve; 0: none.
    #[serde(default)]
    pub snapshot_every: usize,
    /// Weight of the minimal-change term in the adversarial step (the mean absolute change
    /// from an infected volume to its twin inside the lungs); 0: the original method.
    #[serde(default)]
    pub change_weight: f64,
    /// LeakyReLU instead of ReLU at the generator's output, so a twin the adversary drove
    /// below zero can come back.
    #[serde(default)]
    pub leaky_output: bool,
    /// `global`: one verdict per volume (the original); `patch`: one logit per cell of the
    /// discriminator's last feature map (a 22-voxel field every 8 voxels), least squares
    /// weighted by the lung share each cell sees.
    #[serde(default)]
    pub adversary: AdversaryParam,
    /// The discriminator's activation below zero: 0 is the original's ReLU, a positive slope
    /// (0.2 in DCGAN) a LeakyReLU, whose units cannot die.
    #[serde(default)]
    pub discriminator_slope: f64,
}

/// How the discriminator judges (`adversary`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AdversaryParam {
    /// One verdict per volume, the original.
    #[default]
    Global,
    /// One lung-weighted verdict per cell.
    Patch,
}

impl From<AdversaryParam> for Adversary {
    fn from(p: AdversaryParam) -> Self {
        match p {
            AdversaryParam::Global => Adversary::Global,
            AdversaryParam::Patch => Adversary::Patch,
        }
    }
}

fn healthy() -> Vec<String> {
    vec!["CT-0".into()]
}
fn iterations() -> usize {
    10_000
}
fn batch() -> usize {
    5
}
fn width() -> f64 {
    1.0
}
fn lr_generator() -> f64 {
    5e-5
}
fn lr_discriminator() -> f64 {
    1e-3
}
fn noise_amplitude() -> f32 {
    1.0
}
fn checkpoint_every() -> usize {
    100
}

/// What `gan.json` records: how to rebuild the generator, on which grid, and the split.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GanInfo {
    /// The recipe (widths, learning rates, seed, …).
    pub recipe: GanRecipe,
    /// `[D, H, W]` of every training volume.
    pub shape: [usize; 3],
    /// Items trained as healthy.
    pub healthy: Vec<String>,
    /// Items trained as infected.
    pub infected: Vec<String>,
    /// Items held out.
    pub holdout: Vec<String>,
}

impl Stage for GanTrainStage {
    type Params = GanTrainParams;

    fn kind(&self) -> &'static str {
        "gan_train"
    }

    fn version(&self) -> u32 {
        // 2: Adam is one fused kernel per tensor on GPU backends (rounding differs there; the CPU
        // path is unchanged). 3: the CPU's convolutions, transposed convolutions and pooling
        // are host operations (summation order changed); history gains the discriminator's
        // accuracy. 4: history gains the twins' mean change inside the lungs. 5: the CPU's
        // products summed in one order on every CPU (stretches of K, no lane-width sums).
        // 6: history gains the share of the discriminator's last features alive.
        6
    }

    fn about(&self) -> &'static str {
        "Trains the 3D GAN (generator: dense 3-D U-Net with latent noise; discriminator: 3-D \
         CNN) on cropped studies: healthy categories reconstructed from Perlin-noised copies, \
         infected ones pushed toward healthy. Items in `holdout` are never trained on. \
         Checkpoints every `checkpoint_every` iterations in the task's work directory; a killed \
         training resumes from the last one. Writes generator.bin, gan.json (recipe, grid, \
         split), snapshots/iteration-NNNNNN.bin every `snapshot_every` iterations, before the \
         first and after the last (for gan_curve) and history.csv/json (losses, and the \
         discriminator's accuracy on real and generated volumes, the share of its last features alive, \
         and the twins' mean change). \
         Beyond the original: `change_weight` adds a minimal-change term to the adversarial \
         step, `leaky_output` keeps the generator's output alive below zero and `adversary: \
         patch` judges each region of the lung instead of the whole volume. Reads one \
         crop-like stage (`needs`); every axis of its grid must be a multiple of 16 and at \
         least 32."
    }

    fn check(&self, p: &GanTrainParams, decl: &StageDecl) -> Result<(), ParamError> {
        check_range("iterations", p.iterations, 1..=10_000_000, "")?;
        check_range("batch", p.batch, 1..=256, "")?;
        check_range("width", p.width, 0.05..=4.0, "")?;
        check_range("lr_generator", p.lr_generator, 1e-9..=1.0, "")?;
        check_range("lr_discriminator", p.lr_discriminator, 1e-9..=1.0, "")?;
        check_range("noise_amplitude", p.noise_amplitude, 0.0..=10.0, "")?;
        check_range("checkpoint_every", p.checkpoint_every, 1..=10_000_000, "")?;
        check_range("change_weight", p.change_weight, 0.0..=1000.0, "")?;
        check_range("discriminator_slope", p.discriminator_slope, 0.0..=1.0, "")?;
        if let Some(c) = p.healthy.iter().find(|c| p.infected.contains(c)) {
            return Err(ParamError::field(
                "infected",
                format!("{c} is also listed as healthy"),
            ));
        }
        one_input(self.kind(), decl)
    }

    fn device_dependent(&self) -> bool {
        true
    }

    fn run(&self, p: &GanTrainParams, ctx: &TaskContext) -> Result<(), StageError> {
        let crops: Vec<Crop> = ctx
            .inputs
            .iter()
            .map(|i| read_crop(i, self.kind()))
            .collect::<Result<_, _>>()?;
        let unknown = unknown_items(&p.holdout, &crops);
        if !unknown.is_empty() {
            return Err(format!(
                "holdout names items that no input has: {unknown:?}\n  help: use the item ids of the upstream stage (`covflow plan` lists them)"
            )
            .into());
        }
        let shape = crops.first().ok_or("gan_train has no input volumes")?.shape;
        if let Some(c) = crops.iter().find(|c| c.shape != shape) {
            return Err(format!("{} is {:?} but {} is {:?}: the GAN trains on one grid\n  help: crop every study to the same `shape`", c.id, c.shape, crops[0].id, shape).into());
        }
        if shape.iter().any(|&n| !n.is_multiple_of(16) || n < 32) {
            return Err(format!("the crops' grid (z, y, x) {shape:?} does not suit the GAN: every axis must be a multiple of 16 (four poolings) and at least 32 (the discriminator's valid convolutions)\n  help: set the crop stage's `shape` to e.g. [64, 64, 32]").into());
        }
        let mut info = GanInfo {
            recipe: GanRecipe {
                width: p.width,
                lr_generator: p.lr_generator,
                lr_discriminator: p.lr_discriminator,
                batch: p.batch,
                iterations: p.iterations,
                seed: p.seed,
                noise: NoiseAugment {
                    amplitude: p.noise_amplitude,
                    ..NoiseAugment::default()
                },
                conv: conv_for(kernel_device(ctx.device)),
                change_weight: p.change_weight,
                leaky_output: p.leaky_output,
                adversary: p.adversary.into(),
                discriminator_slope: p.discriminator_slope,
            },
            shape,
            healthy: Vec::new(),
            infected: Vec::new(),
            holdout: p.holdout.clone(),
        };
        let mut data = GanData {
            shape,
            healthy: Vec::new(),
            infected: Vec::new(),
        };
        for c in &crops {
            if p.holdout.contains(&c.id) {
                continue;
            }
            let cat = c.category.as_deref().unwrap_or("");
            let sample = || GanSample {
                ct: c.ct.iter().map(|v| v.clamp(0.0, 1.0)).collect(),
                lung: c.lung.clone(),
            };
            if c.units.window.is_none() {
                return Err(format!("{}: the CT is in HU; the GAN trains on windowed intensities in [0, 1]\n  help: give the resample stage a `window`", c.id).into());
            }
            if p.healthy.iter().any(|h| h == cat) {
                data.healthy.push(sample());
                info.healthy.push(c.id.clone());
            } else if p.infected.iter().any(|h| h == cat) {
                data.infected.push(sample());
                info.infected.push(c.id.clone());
            }
        }
        if data.healthy.is_empty() || data.infected.is_empty() {
            return Err(format!(
                "the GAN needs healthy and infected training volumes: {} healthy ({:?}), {} infected ({:?}) after the holdout\n  help: check the items' categories and `healthy`/`infected`/`holdout`",
                data.healthy.len(), p.healthy, data.infected.len(), p.infected
            ).into());
        }
        ctx.log.line(format!(
            "training on {} healthy and {} infected volumes of {shape:?}, {} held out, {} iterations",
            data.healthy.len(),
            data.infected.len(),
            p.holdout.len(),
            p.iterations
        ));
        let start = Instant::now();
        let report_every = (p.iterations / 20).max(1);
        let mut first = None;
        let snapshots = ctx.work_dir.join(SNAPSHOTS);
        let files = GanFiles {
            checkpoint: &ctx.work_dir.join("checkpoint"),
            checkpoint_every: p.checkpoint_every,
            weights: &ctx.out_dir.join(WEIGHTS),
            snapshots: (p.snapshot_every > 0).then_some((snapshots.as_path(), p.snapshot_every)),
        };
        let outcome = train_gan(
            kernel_device(ctx.device),
            &info.recipe,
            &data,
            files,
            &mut |l| {
                let done_here = first.get_or_insert_with(|| {
                    // Said at once, so a long run's log shows it was resumed.
                    if l.iteration > 1 {
                        ctx.log.line(format!(
                            "resumed from the checkpoint of iteration {}",
                            l.iteration - 1
                        ));
                    }
                    l.iteration - 1
                });
                if l.iteration.is_multiple_of(report_every) || l.iteration == p.iterations {
                    let per = start.elapsed().as_secs_f64() / (l.iteration - *done_here) as f64;
                    let eta = per * (p.iterations - l.iteration) as f64;
                    ctx.log.progress(format!(
                        "iteration {}/{}: reconstruction {:.5}, discriminator {:.4} (right on {:.0} % real, {:.0} % generated), adversarial {:.4} ({per:.2} s/it, ETA {eta:.0} s)",
                        l.iteration,
                        p.iterations,
                        l.reconstruction,
                        l.discriminator,
                        100.0 * l.accuracy_real,
                        100.0 * l.accuracy_generated,
                        l.adversarial
                    ));
                }
                !ctx.cancel.is_cancelled()
            },
        )?;
        // Only the log says it resumed: the artifact equals the uninterrupted run's.
        debug_assert!(outcome.history.len() == p.iterations);
        if p.snapshot_every > 0 {
            copy_snapshots(&snapshots, &ctx.out_dir.join(SNAPSHOTS), p)?;
        }
        let mut csv = String::from(
            "iteration,reconstruction,discriminator,adversarial,accuracy_real,accuracy_generated,change,discriminator_live\n",
        );
        for l in &outcome.history {
            csv += &format!(
                "{},{},{},{},{},{},{},{}\n",
                l.iteration,
                l.reconstruction,
                l.discriminator,
                l.adversarial,
                l.accuracy_real,
                l.accuracy_generated,
                l.change,
                l.discriminator_live
            );
        }
        write(&ctx.out_dir.join("history.csv"), csv.as_bytes())?;
        write(
            &ctx.out_dir.join("history.json"),
            &serde_json::to_vec(&outcome.history)?,
        )?;
        write(&ctx.out_dir.join(INFO), &serde_json::to_vec_pretty(&info)?)?;
        Ok(())
    }
}

/// Copies the snapshots this training's schedule makes (a folder left by an earlier schedule
/// may hold others) from the work directory to the output.
fn copy_snapshots(from: &Path, to: &Path, p: &GanTrainParams) -> Result<(), StageError> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for iteration in snapshot_iterations(p.iterations, p.snapshot_every) {
        let name = format!("{}.bin", snapshot_name(iteration));
        std::fs::copy(from.join(&name), to.join(&name))
            .map_err(|e| format!("{}: {e}", from.join(&name).display()))?;
    }
    Ok(())
}
