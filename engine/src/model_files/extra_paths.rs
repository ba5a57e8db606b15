//! ComfyUI's `extra_model_paths.yaml`: model folders kept outside `models/`, read by the rules
//! of ComfyUI's `utils/extra_config.py` (`load_extra_path_config`). Each top-level section
//! (`comfyui:`, `a111:`, …) may have a `base_path` (`~` and `$VAR` expanded; relative to the
//! YAML file's folder), `is_default` (its folders are searched first) and `all_model_folders`
//! (with a `base_path`: `<base_path>/<category>` for every category); every other key is a
//! category (`diffusion_models`, `unet`, `loras`, …) whose value is one folder or several, one
//! per line, each joined to `base_path` (or, without one, to the YAML file's folder).

use std::path::{Component, Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::EngineError;

/// The file's name; ComfyUI reads it from its install folder, beside `main.py` and `models/`.
pub const FILE_NAME: &str = "extra_model_paths.yaml";

/// The categories `all_model_folders` adds that the scan uses (ComfyUI's canonical names;
/// `unet` and `clip` are legacy names of the first two).
const CANONICAL: [&str; 4] = ["diffusion_models", "text_encoders", "vae", "loras"];

/// One folder the YAML file adds to a category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraFolder {
    /// The key it is listed under (`loras`, `unet`, …).
    pub category: String,
    /// Absolute and normalised (`.` and `..` resolved by name, as Python's `normpath`).
    pub path: PathBuf,
    /// From a section with `is_default: true`: ComfyUI searches it before `models/`.
    pub is_default: bool,
    /// Named in the file (not implied by `all_model_folders`): its absence is worth reporting.
    pub listed: bool,
}

/// The YAML file ComfyUI would read for a scan of `root`: in `root` itself (a ComfyUI install
/// folder), or beside it when `root` is the install's `models/` folder.
#[must_use]
pub fn beside(root: &Path) -> Option<PathBuf> {
    let here = root.join(FILE_NAME);
    if here.is_file() {
        return Some(here);
    }
    let parent = std::path::absolute(root).ok()?.parent()?.join(FILE_NAME);
    (root.file_name().is_some_and(|name| name == "models") && parent.is_file()).then_some(parent)
}

/// The folders `yaml_path` lists, in the order ComfyUI adds them.
pub fn load(yaml_path: &Path) -> Result<Vec<ExtraFolder>, EngineError> {
    let text = std::fs::read_to_string(yaml_path)
        .map_err(|e| EngineError::io("reading ComfyUI's model folder list", yaml_path, e))?;
    let yaml_dir = std::path::absolute(yaml_path)
        .map_err(|e| EngineError::io("locating ComfyUI's model folder list", yaml_path, e))?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    parse(&text, &yaml_dir).map_err(|problem| EngineError::ExtraModelPaths {
        problem,
        path: yaml_path.to_owned(),
    })
}

/// [`load`] on the file's text; `yaml_dir` is the absolute folder it is in.
fn parse(text: &str, yaml_dir: &Path) -> Result<Vec<ExtraFolder>, String> {
    let docs =
        YamlLoader::load_from_str(text).map_err(|e| format!("it is not valid YAML ({e})"))?;
    let config = match docs.as_slice() {
        [] | [Yaml::Null] => return Ok(Vec::new()),
        [Yaml::Hash(config)] => config,
        [_] => return Err("its top level is not a list of sections (`comfyui:` …)".to_owned()),
        _ => return Err("it holds several YAML documents; ComfyUI reads one".to_owned()),
    };
    let mut folders = Vec::new();
    for (name, section) in config {
        let name = key(name);
        let section = match section {
            Yaml::Null => continue,
            Yaml::Hash(section) => section,
            _ => {
                return Err(format!(
                    "section `{name}` is not a list of `category: folder`"
                ));
            }
        };
        let mut base_path = None;
        let mut is_default = false;
        let mut all_model_folders = false;
        let mut categories = Vec::new();
        for (category, value) in section {
            match (key(category).as_str(), value) {
                ("base_path", Yaml::String(base)) => {
                    let base = expand_vars(&expand_user(base));
                    // An empty base path is no base path, as in Python.
                    if !base.is_empty() {
                        base_path = Some(yaml_dir.join(base));
                    }
                }
                ("base_path", _) => {
                    return Err(format!("`base_path` of section `{name}` is not a folder"));
                }
                ("is_default", flag) => is_default = truthy(flag),
                ("all_model_folders", flag) => all_model_folders = truthy(flag),
                (category, Yaml::String(lines)) => categories.push((category.to_owned(), lines)),
                (category, _) => {
                    return Err(format!(
                        "`{category}` of section `{name}` is not a folder or lines of folders"
                    ));
                }
            }
        }
        if let (true, Some(base)) = (all_model_folders, &base_path) {
            for category in CANONICAL {
                folders.push(ExtraFolder {
                    category: category.to_owned(),
                    path: normalize(&base.join(category)),
                    is_default,
                    listed: false,
                });
            }
        }
        for (category, lines) in categories {
            for line in lines.split('\n').filter(|line| !line.is_empty()) {
                // Joining an absolute path keeps it, as `os.path.join` does.
                let path = base_path.as_deref().unwrap_or(yaml_dir).join(line);
                folders.push(ExtraFolder {
                    category: category.clone(),
                    path: normalize(&path),
                    is_default,
                    listed: true,
                });
            }
        }
    }
    Ok(folders)
}

fn key(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// Python's truth value of what PyYAML (YAML 1.1) reads: `yes`/`no`/`on`/`off` are booleans
/// there, strings to this YAML 1.2 parser.
fn truthy(yaml: &Yaml) -> bool {
    match yaml {
        Yaml::Boolean(b) => *b,
        Yaml::String(s) if ["no", "No", "NO", "off", "Off", "OFF"].contains(&s.as_str()) => false,
        Yaml::Integer(i) => *i != 0,
        Yaml::Real(r) => r.parse::<f64>().is_ok_and(|r| r != 0.0),
        Yaml::String(s) => !s.is_empty(),
        Yaml::Array(a) => !a.is_empty(),
        Yaml::Hash(h) => !h.is_empty(),
        Yaml::Null | Yaml::Alias(_) | Yaml::BadValue => false,
    }
}

/// `~` and `~/…` to the home folder (`os.path.expanduser`; `~user` is left as it is).
fn expand_user(path: &str) -> String {
    let home = || std::env::var_os("HOME").map(|h| h.to_string_lossy().into_owned());
    match path.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match home() {
            Some(home) => format!("{}{rest}", home.trim_end_matches('/')),
            None => path.to_owned(),
        },
        _ => path.to_owned(),
    }
}

/// `$NAME` and `${NAME}` to the variable's value; unknown ones stay (`os.path.expandvars`).
fn expand_vars(path: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
            (&after[..end], end)
        };
        match std::env::var(name) {
            Ok(value) if !name.is_empty() => out.push_str(&value),
            _ => out.push_str(&rest[at..=at + len]),
        }
        rest = &rest[at + 1 + len..];
    }
    out.push_str(rest);
    out
}

/// `.` dropped and `..` taken back by name, like Python's `os.path.normpath`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(category: &str, path: &str, is_default: bool) -> ExtraFolder {
        ExtraFolder {
            category: category.to_owned(),
            path: PathBuf::from(path),
            is_default,
            listed: true,
        }
    }

    #[test]
    fn sections_resolve_like_comfyui() {
        let text = "\
comfyui:
    base_path: ../shared/
    is_default: true
    unet: models/unet
    loras: |
        models/loras
        ./more//loras/../lora
        /abs/loras
a111:
    base_path: /sd/webui
    vae: models/VAE
no_base:
    clip: clip
    vae: /elsewhere/vae
empty:
";
        let folders = parse(text, Path::new("/apps/ComfyUI")).unwrap();
        assert_eq!(
            folders,
            [
                folder("unet", "/apps/shared/models/unet", true),
                folder("loras", "/apps/shared/models/loras", true),
                folder("loras", "/apps/shared/more/lora", true),
                folder("loras", "/abs/loras", true),
                folder("vae", "/sd/webui/models/VAE", false),
                folder("clip", "/apps/ComfyUI/clip", false),
                folder("vae", "/elsewhere/vae", false),
            ]
        );
    }

    #[test]
    fn all_model_folders_adds_every_category_under_the_base_path() {
        let text = "shared:\n  base_path: store\n  all_model_folders: true\n  loras: extra\n";
        let folders = parse(text, Path::new("/c")).unwrap();
        let paths: Vec<_> = folders.iter().map(|f| (f.listed, f.path.clone())).collect();
        assert_eq!(
            paths,
            [
                (false, PathBuf::from("/c/store/diffusion_models")),
                (false, PathBuf::from("/c/store/text_encoders")),
                (false, PathBuf::from("/c/store/vae")),
                (false, PathBuf::from("/c/store/loras")),
                (true, PathBuf::from("/c/store/extra")),
            ]
        );
    }

    #[test]
    fn home_and_variables_expand_in_the_base_path_only() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(expand_user("~/models"), format!("{home}/models"));
        assert_eq!(expand_user("~other/models"), "~other/models");
        assert_eq!(expand_vars("$HOME/a"), format!("{home}/a"));
        assert_eq!(expand_vars("${HOME}/a"), format!("{home}/a"));
        assert_eq!(
            expand_vars("$NO_SUCH_VAR_8F/${NO_SUCH_VAR_8F}/$"),
            "$NO_SUCH_VAR_8F/${NO_SUCH_VAR_8F}/$"
        );
        let folders = parse("s:\n  base_path: ~/m\n  vae: ~/v\n", Path::new("/c")).unwrap();
        assert_eq!(folders[0].path, PathBuf::from(format!("{home}/m/~/v")));
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        for (text, expected) in [
            ("a: [unclosed", "not valid YAML"),
            ("- a\n- b\n", "top level"),
            ("s: just text\n", "section `s`"),
            ("s:\n  loras:\n", "`loras` of section `s`"),
            ("s:\n  base_path: [a]\n", "`base_path` of section `s`"),
        ] {
            let problem = parse(text, Path::new("/c")).unwrap_err();
            assert!(problem.contains(expected), "{text:?}: {problem}");
        }
        assert_eq!(parse("", Path::new("/c")).unwrap(), []);
    }

    #[test]
    fn is_default_reads_yaml_1_1_booleans_as_pyyaml_does() {
        for (value, expected) in [
            ("true", true),
            ("yes", true),
            ("On", true),
            ("1", true),
            ("false", false),
            ("no", false),
            ("OFF", false),
            ("0", false),
            ("", false),
        ] {
            let text = format!("s:\n  is_default: {value}\n  vae: v\n");
            let folders = parse(&text, Path::new("/c")).unwrap();
            assert_eq!(folders[0].is_default, expected, "{value:?}");
        }
    }
}
