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
pub struct PhantomArgs {
    /// Output directory (a MosMed tree is written there).
    #[arg(long)]
    out: PathBuf,
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
    let t = std::time::Instant::now();
    let written = write_mosmed_tree(&a.out, a.count, a.seed, a.size)?;
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
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
