//! The `phantom` dataset source and the `phantom` stage kind that writes each study.
//!
//! ```yaml
//! datasets:
//!   studies: {phantom: {count: 8, seed: 1, size: small}}
//! stages:
//!   scans:
//!     uses: phantom
//!     foreach: studies
//! ```
//! Each task writes `ct.nii.gz` (int16 HU), `lung.nii.gz` and `lesion.nii.gz` (uint8) and
//! `study.json` (category, involvement).

use std::collections::BTreeMap;
use std::path::Path;

use covflow_engine::{DatasetSource, Item, Stage, StageDecl, StageError, TaskContext};
use serde_json::Value as Json;

use crate::phantom::{GENERATOR_VERSION, PhantomSize, category_of, generate};
use crate::volume::Volume;

/// The `phantom` dataset source: `phantom: {count: N, seed: S, size: small|mosmed}`.
pub struct PhantomSource;

fn phantom_spec(spec: &Json) -> Result<(u64, u64, PhantomSize), String> {
    let p = spec
        .get("phantom")
        .and_then(|p| p.as_object())
        .ok_or("`phantom` takes a mapping: {count: N, seed: S, size: small|mosmed}")?;
    for k in p.keys() {
        if !["count", "seed", "size"].contains(&k.as_str()) {
            return Err(format!(
                "unknown field `{k}` in phantom (count, seed, size)"
            ));
        }
    }
    let count = p
        .get("count")
        .and_then(|v| v.as_u64())
        .ok_or("phantom needs `count: N` (a positive integer)")?;
    if count == 0 || count > 9999 {
        return Err(format!("phantom count {count} is out of range (1..=9999)"));
    }
    let seed = p
        .get("seed")
        .map(|v| v.as_u64().ok_or("`seed` must be a non-negative integer"))
        .transpose()?
        .unwrap_or(0);
    let size = match p.get("size") {
        None => PhantomSize::Small,
        Some(v) => v
            .as_str()
            .ok_or("`size` must be small or mosmed")?
            .parse()?,
    };
    Ok((count, seed, size))
}

/// The study id of phantom `index` (MosMed numbering starts at 1).
pub fn study_id(index: u32) -> String {
    format!("study_{:04}", index + 1)
}

impl DatasetSource for PhantomSource {
    fn kind(&self) -> &'static str {
        "phantom"
    }

    fn check(&self, spec: &Json) -> Result<(), String> {
        phantom_spec(spec).map(|_| ())
    }

    fn items(&self, spec: &Json, _: &Path) -> Result<Vec<Item>, String> {
        let (count, seed, size) = phantom_spec(spec)?;
        Ok((0..count as u32)
            .map(|i| {
                let size_name = match size {
                    PhantomSize::Small => "small",
                    PhantomSize::Mosmed => "mosmed",
                };
                let identity =
                    format!("phantom v{GENERATOR_VERSION} seed {seed} index {i} size {size_name}");
                let mut attrs = BTreeMap::new();
                attrs.insert("category".into(), format!("CT-{}", category_of(i)));
                attrs.insert("seed".into(), seed.to_string());
                attrs.insert("index".into(), i.to_string());
                attrs.insert("size".into(), size_name.into());
                Item {
                    id: study_id(i),
                    digest: blake3::hash(identity.as_bytes()).to_hex().to_string(),
                    attrs,
                }
            })
            .collect())
    }
}

/// The `phantom` stage kind: generates the item's study.
pub struct PhantomStage;

impl Stage for PhantomStage {
    fn kind(&self) -> &'static str {
        "phantom"
    }

    fn version(&self) -> u32 {
        GENERATOR_VERSION
    }

    fn help(&self) -> String {
        "phantom takes no parameters; fan it out over a `phantom` dataset (foreach)".into()
    }

    fn check(&self, decl: &StageDecl) -> Result<(), String> {
        if let Some(k) = decl.with.keys().next() {
            return Err(format!(
                "unknown parameter `{k}` for phantom (it takes none)"
            ));
        }
        if decl.foreach.is_none() {
            return Err("phantom needs `foreach:` over a phantom dataset".into());
        }
        Ok(())
    }

    fn run(&self, ctx: &TaskContext) -> Result<(), StageError> {
        let item = ctx.item.ok_or("phantom runs per item")?;
        let attr = |k: &str| {
            item.attrs.get(k).cloned().ok_or_else(|| {
                format!(
                    "item `{}` is not from a phantom dataset (no `{k}`)",
                    item.id
                )
            })
        };
        let seed: u64 = attr("seed")?.parse()?;
        let index: u32 = attr("index")?.parse()?;
        let size: PhantomSize = attr("size")?.parse()?;
        let p = generate(seed, index, size);
        p.ct.write_i16(&ctx.out_dir.join("ct.nii.gz"))?;
        let mask = |m: &ndarray::Array3<u8>| {
            let mut v = p.ct.clone();
            v.data = m.mapv(f32::from);
            v
        };
        mask(&p.lung).write_u8(&ctx.out_dir.join("lung.nii.gz"))?;
        mask(&p.lesion).write_u8(&ctx.out_dir.join("lesion.nii.gz"))?;
        let info = serde_json::json!({
            "id": item.id, "category": format!("CT-{}", p.category),
            "involvement": p.involvement, "seed": seed, "index": index,
            "generator_version": GENERATOR_VERSION,
        });
        std::fs::write(
            ctx.out_dir.join("study.json"),
            serde_json::to_vec_pretty(&info)?,
        )?;
        ctx.log.line(format!(
            "{}: CT-{}, lesions cover {:.2} % of the lungs",
            item.id,
            p.category,
            100.0 * p.involvement
        ));
        Ok(())
    }
}

/// Writes a MosMed directory tree of phantoms: `studies/CT-k/study_NNNN.nii.gz`,
/// `masks/study_NNNN_mask.nii.gz` (lesions) and `lungs/study_NNNN_lung.nii.gz`.
pub fn write_mosmed_tree(
    out: &Path,
    count: u32,
    seed: u64,
    size: PhantomSize,
) -> Result<Vec<(String, u8, f64)>, StageError> {
    let mut written = Vec::new();
    for i in 0..count {
        let p = generate(seed, i, size);
        let id = study_id(i);
        let studies = out.join("studies").join(format!("CT-{}", p.category));
        let masks = out.join("masks");
        let lungs = out.join("lungs");
        for d in [&studies, &masks, &lungs] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        p.ct.write_i16(&studies.join(format!("{id}.nii.gz")))?;
        let as_volume = |m: &ndarray::Array3<u8>| {
            let mut v: Volume = p.ct.clone();
            v.data = m.mapv(f32::from);
            v
        };
        as_volume(&p.lesion).write_u8(&masks.join(format!("{id}_mask.nii.gz")))?;
        as_volume(&p.lung).write_u8(&lungs.join(format!("{id}_lung.nii.gz")))?;
        written.push((id, p.category, p.involvement));
    }
    Ok(written)
}
