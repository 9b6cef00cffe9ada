//! `covflow inspect` and `covflow phantom`.

use std::path::PathBuf;

use clap::Args;
use covflow_imaging::Volume;
use covflow_imaging::phantom::{PhantomSize, write_mosmed_tree};

use crate::Failure;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// NIfTI files (`.nii`, `.nii.gz`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// One JSON object per file.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).multiple(true).args(["out", "stats"]))]
pub struct PhantomArgs {
    /// Output directory (a MosMed tree is written there).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure the lesions of the studies instead (volume, 3-D components, largest component,
    /// slices with lesion) and compare them per category with MosMedData's expert masks; one
    /// JSON line per study on stdout, the summary on stderr.
    #[arg(long)]
    stats: bool,
    /// With --stats: only studies of this category (0–4), `count` of them.
    #[arg(long, requires = "stats", value_parser = clap::value_parser!(u8).range(0..=4))]
    category: Option<u8>,
    /// Number of studies.
    #[arg(long, default_value_t = 8)]
    count: u32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// small (128×128×16, for tests) or mosmed (512×512×41 at 0.7 × 0.7 × 8 mm).
    #[arg(long, default_value = "small")]
    size: PhantomSize,
}

pub fn inspect(a: InspectArgs) -> Result<(), Failure> {
    let mut failed = 0;
    for f in &a.files {
        match Volume::read_with_info(f) {
            Ok((_, info)) => {
                if a.json {
                    println!("{}", serde_json::to_string(&info)?);
                } else {
                    println!(
                        "{}  {}x{}x{}  {:.3}x{:.3}x{:.3} mm  {}  {}  range [{}, {}]  scl_slope {} scl_inter {}  qform {} sform {}",
                        f.display(),
                        info.shape[0],
                        info.shape[1],
                        info.shape[2],
                        info.spacing[0],
                        info.spacing[1],
                        info.spacing[2],
                        info.datatype,
                        info.orientation,
                        info.min,
                        info.max,
                        info.scl_slope,
                        info.scl_inter,
                        info.qform_code,
                        info.sform_code
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Failed(format!(
            "{failed} file(s) could not be read"
        )));
    }
    Ok(())
}

pub fn phantom(a: PhantomArgs) -> Result<(), Failure> {
    if a.stats {
        return phantom_stats(&a);
    }
    let out = a.out.as_deref().expect("clap requires --out or --stats");
    let t = std::time::Instant::now();
    let written = write_mosmed_tree(out, a.count, a.seed, a.size)?;
    for s in &written {
        println!(
            "{}  CT-{}  lesions {:.2} % of lung",
            s.id,
            s.category,
            100.0 * s.involvement
        );
    }
    eprintln!(
        "covflow: {} phantoms in {} ({:.1} s)",
        written.len(),
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `covflow phantom --stats`: per-study lesion statistics and, per category, their medians
/// beside the real expert masks'.
fn phantom_stats(a: &PhantomArgs) -> Result<(), Failure> {
    use covflow_imaging::phantom::{MOSMED_CT1, median, phantom_stats};
    let t = std::time::Instant::now();
    let studies = phantom_stats(a.seed, a.size, a.count as usize, a.category);
    for s in &studies {
        println!("{}", serde_json::to_string(s)?);
    }
    eprintln!(
        "covflow: {} phantoms (seed {}, size {}) in {:.1} s; per study, median (min–max):",
        studies.len(),
        a.seed,
        a.size.name(),
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "{:<10} {:>4}  {:>22}  {:>16}  {:>16}  {:>16}",
        "category", "n", "lesion volume, ml", "components", "largest, ml", "slices w/ lesion"
    );
    let col = |v: Vec<f64>| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        format!("{:.0} ({:.1}–{:.0})", median(v), lo, hi)
    };
    for c in 0..=4u8 {
        let of: Vec<_> = studies.iter().filter(|s| s.category == c).collect();
        if of.is_empty() {
            continue;
        }
        let get = |f: &dyn Fn(&covflow_imaging::phantom::StudyStats) -> f64| -> Vec<f64> {
            of.iter().map(|s| f(s)).collect()
        };
        eprintln!(
            "{:<10} {:>4}  {:>22}  {:>16}  {:>16}  {:>16}",
            format!("CT-{c}"),
            of.len(),
            col(get(&|s| s.lesions.volume_ml)),
            col(get(&|s| s.lesions.components as f64)),
            col(get(&|s| s.lesions.largest_ml)),
            format!(
                "{} of {}",
                col(get(&|s| s.lesions.slices_with_lesion as f64)),
                of[0].lesions.slices
            ),
        );
    }
    let r = MOSMED_CT1;
    eprintln!(
        "{:<10} {:>4}  {:>22}  {:>16}  {:>16}  {:>16}",
        "MosMed CT-1",
        50,
        format!(
            "{:.0} ({}–{:.0})",
            r.volume_ml.0, r.volume_ml.1, r.volume_ml.2
        ),
        format!(
            "{:.0} ({:.0}–{:.0})",
            r.components.0, r.components.1, r.components.2
        ),
        format!("{:.0}", r.largest_ml),
        format!("{:.0} of ~{:.0}", r.slices_with_lesion, r.slices),
    );
    Ok(())
}
