//! `covflow stage run`: the one command line a cluster job runs, built here and parsed by the
//! CLI, so that what the SLURM executor writes into a job script is what the binary accepts.

use std::path::PathBuf;

use crate::stage::Device;

/// One task of a pipeline as a command line, with everything a job needs to see the same
/// pipeline and cache as the run that submitted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageInvocation {
    /// The pipeline file (absolute, so a job's working directory does not matter).
    pub pipeline: PathBuf,
    /// The stage.
    pub stage: String,
    /// The item of a fan-out task.
    pub item: Option<String>,
    /// The cache directory.
    pub cache: PathBuf,
    /// The run's device.
    pub device: Device,
    /// The run's `--set KEY=VALUE` overrides, in order.
    pub overrides: Vec<String>,
    /// Re-run even if cached.
    pub force: bool,
}

impl StageInvocation {
    /// The arguments after the program name.
    ///
    /// ```
    /// use covflow_engine::{Device, StageInvocation};
    /// let inv = StageInvocation {
    ///     pipeline: "/p/demo.yaml".into(),
    ///     stage: "crops".into(),
    ///     item: Some("study_0001".into()),
    ///     cache: "/scratch/cache".into(),
    ///     device: Device::Cuda,
    ///     overrides: vec!["params.count=2".into()],
    ///     force: false,
    /// };
    /// assert_eq!(
    ///     inv.args().join(" "),
    ///     "stage run /p/demo.yaml crops --cache /scratch/cache --device cuda --set params.count=2 --item=study_0001"
    /// );
    /// ```
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "stage".to_string(),
            "run".to_string(),
            self.pipeline.to_string_lossy().into_owned(),
            self.stage.clone(),
            "--cache".to_string(),
            self.cache.to_string_lossy().into_owned(),
            "--device".to_string(),
            self.device.name().to_string(),
        ];
        for o in &self.overrides {
            a.push("--set".into());
            a.push(o.clone());
        }
        if self.force {
            a.push("--force".into());
        }
        // `--item=ID`, so that no id can be read as an option.
        if let Some(item) = &self.item {
            a.push(format!("--item={item}"));
        }
        a
    }

    /// The command as one shell line running `program`. With `item_var`, the item is read from
    /// that shell variable (a job array's element) instead of [`StageInvocation::item`].
    ///
    /// ```
    /// use covflow_engine::{Device, StageInvocation};
    /// let inv = StageInvocation {
    ///     pipeline: "/my data/p.yaml".into(),
    ///     stage: "grid".into(),
    ///     item: None,
    ///     cache: "/c".into(),
    ///     device: Device::Cpu,
    ///     overrides: vec![],
    ///     force: false,
    /// };
    /// assert_eq!(
    ///     inv.shell_line("/bin/covflow", Some("item")),
    ///     "/bin/covflow stage run '/my data/p.yaml' grid --cache /c --device cpu --item=\"$item\""
    /// );
    /// ```
    pub fn shell_line(&self, program: &str, item_var: Option<&str>) -> String {
        let mut words: Vec<String> = std::iter::once(program.to_string())
            .chain(self.args())
            .map(|w| shell_quote(&w))
            .collect();
        if let Some(var) = item_var {
            words.push(format!("--item=\"${var}\""));
        }
        words.join(" ")
    }
}

/// `s` as one shell word: plain words as they are, anything else single-quoted.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/a/b.yaml"), "/a/b.yaml");
        assert_eq!(shell_quote("params.x=1"), "params.x=1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
