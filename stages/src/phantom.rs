//! The `phantom` dataset source and the `phantom` stage kind that writes each study
//! ([`covflow_imaging::phantom`]).
//!
//! ```yaml
//! datasets:
//!   studies: {phantom: {count: 8, seed: 1, size: small}}
//! stages:
//!   scans:
//!     uses: phantom
//!     foreach: studies
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use covflow_engine::{DatasetSource, Item, ParamError, Stage, StageDecl, StageError, TaskContext};
use covflow_imaging::phantom::{
    GENERATOR_VERSION, PhantomParams, PhantomSize, category_of, study_id,
};
use covflow_imaging::study::{CT, LESION, LUNG, STUDY_INFO};

/// The `phantom` dataset source: `phantom: {count: N, seed: S, size: small|mosmed}`.
pub struct PhantomSource;

/// A `phantom` dataset's declaration.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhantomSpec {
    phantom: PhantomSet,
}

/// The mapping under `phantom:`.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PhantomSet {
    count: u64,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    size: PhantomSize,
}

impl PhantomSet {
    const MAX_COUNT: u64 = 9999;
}

impl DatasetSource for PhantomSource {
    type Spec = PhantomSpec;

    fn kind(&self) -> &'static str {
        "phantom"
    }

    fn check(&self, spec: &PhantomSpec) -> Result<(), String> {
        let count = spec.phantom.count;
        if count == 0 || count > PhantomSet::MAX_COUNT {
            return Err(format!(
                "phantom count {count} is out of range (1..={})",
                PhantomSet::MAX_COUNT
            ));
        }
        Ok(())
    }

    fn items(&self, spec: &PhantomSpec, _: &Path) -> Result<Vec<Item>, String> {
        let PhantomSet { count, seed, size } = spec.phantom;
        Ok((0..count as u32)
            .map(|i| {
                let identity = format!(
                    "phantom v{GENERATOR_VERSION} seed {seed} index {i} size {}",
                    size.name()
                );
                let mut attrs = BTreeMap::new();
                attrs.insert("category".into(), format!("CT-{}", category_of(i)));
                attrs.insert("seed".into(), seed.to_string());
                attrs.insert("index".into(), i.to_string());
                attrs.insert("size".into(), size.name().into());
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

/// The `phantom` stage takes no parameters: the dataset item says which study to make.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl Stage for PhantomStage {
    type Params = NoParams;

    fn kind(&self) -> &'static str {
        "phantom"
    }

    fn version(&self) -> u32 {
        GENERATOR_VERSION
    }

    fn about(&self) -> &'static str {
        "Generates one synthetic MosMed-like study per item of a `phantom` dataset (foreach): \
         ct.nii.gz (int16 HU), lung.nii.gz and lesion.nii.gz (uint8, exact masks) and study.json \
         (category, lesion fraction of the lung)."
    }

    fn check(&self, _: &NoParams, decl: &StageDecl) -> Result<(), ParamError> {
        if decl.foreach.is_none() {
            return Err(ParamError::decl(
                "uses",
                "phantom needs `foreach:` over a phantom dataset",
            ));
        }
        Ok(())
    }

    fn run(&self, _: &NoParams, ctx: &TaskContext) -> Result<(), StageError> {
        let item = ctx.item.ok_or("phantom runs per item")?;
        let attr = |k: &str| {
            item.attrs.get(k).cloned().ok_or_else(|| {
                format!(
                    "item `{}` is not from a phantom dataset (no `{k}`)",
                    item.id
                )
            })
        };
        let params = PhantomParams {
            seed: attr("seed")?.parse()?,
            index: attr("index")?.parse()?,
            size: attr("size")?.parse()?,
        };
        let p = params.generate();
        p.ct.write_i16(&ctx.out_dir.join(CT))?;
        p.ct.with_data(p.lung.mapv(f32::from))
            .write_u8(&ctx.out_dir.join(LUNG))?;
        p.ct.with_data(p.lesion.mapv(f32::from))
            .write_u8(&ctx.out_dir.join(LESION))?;
        let info = serde_json::json!({
            "id": item.id, "category": format!("CT-{}", p.category),
            "involvement": p.involvement, "seed": params.seed, "index": params.index,
            "generator_version": GENERATOR_VERSION,
        });
        std::fs::write(
            ctx.out_dir.join(STUDY_INFO),
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
