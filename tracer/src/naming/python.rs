//! The name of a CPython process from its command line: its main script's file name
//! without `.py`, or the module it runs with `-m`.

/// Whether `exe_base` names a CPython interpreter: `python`, `python3`, `python3.12`,
/// `python3.13t` (free-threaded), `python3.12d` (debug).
pub fn is_interpreter(exe_base: &str) -> bool {
    let Some(version) = exe_base.strip_prefix("python") else {
        return false;
    };
    let version = version.strip_suffix(['t', 'd']).unwrap_or(version);
    version.is_empty()
        || version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// What the interpreter runs, from its arguments after `argv[0]`: the script's name, the
/// module's, or None (`-c`, standard input, an interactive interpreter).
pub fn main_name(args: &[String]) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            return args.next().and_then(|script| script_name(script));
        }
        if arg == "-" || !arg.starts_with('-') {
            return script_name(arg);
        }
        if let Some(long) = arg.strip_prefix("--") {
            // The one long option that takes a value as the next argument.
            if long == "check-hash-based-pycs" {
                args.next();
            }
            continue;
        }
        // A cluster of one-letter options: `-u`, `-OO`, `-Bm module`, `-mmodule`.
        let cluster = &arg[1..];
        for (at, option) in cluster.char_indices() {
            if !matches!(option, 'c' | 'm' | 'W' | 'X') {
                continue;
            }
            let attached = &cluster[at + option.len_utf8()..];
            let value = if attached.is_empty() {
                args.next().map(String::as_str)
            } else {
                Some(attached)
            };
            match option {
                'm' => return value.filter(|m| !m.is_empty()).map(str::to_owned),
                'c' => return None,
                _ => break,
            }
        }
    }
    None
}

/// A script's name: its file name without `.py` (`.pyw`, `.pyz`); for a package or
/// directory run as a script (`app/__main__.py`, `app/`), the directory's name.
fn script_name(path: &str) -> Option<String> {
    if path == "-" {
        return None;
    }
    let mut parts = path.rsplit('/').filter(|p| !p.is_empty() && *p != ".");
    let file = parts.next()?;
    let stem = [".py", ".pyw", ".pyz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    if stem == "__main__" {
        return parts.next().map(str::to_owned);
    }
    (!stem.is_empty()).then(|| stem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(args: &[&str]) -> Option<String> {
        main_name(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn interpreters_are_told_by_their_file_names() {
        for exe in [
            "python",
            "python3",
            "python3.12",
            "python3.13t",
            "python3.12d",
        ] {
            assert!(is_interpreter(exe), "{exe}");
        }
        for exe in [
            "pythonista",
            "python3.",
            "python3..1",
            "ipython",
            "py",
            "python3-config",
        ] {
            assert!(!is_interpreter(exe), "{exe}");
        }
    }

    #[test]
    fn scripts_are_named_by_their_file_names() {
        assert_eq!(name(&["/srv/orders_service.py"]).unwrap(), "orders_service");
        assert_eq!(
            name(&["-u", "-X", "dev", "worker.py", "--x"]).unwrap(),
            "worker"
        );
        assert_eq!(name(&["-Wignore", "app.pyw"]).unwrap(), "app");
        assert_eq!(name(&["-W", "ignore", "app.pyz"]).unwrap(), "app");
        assert_eq!(
            name(&["/usr/local/bin/gunicorn", "app:app"]).unwrap(),
            "gunicorn"
        );
        assert_eq!(name(&["srv/app/__main__.py"]).unwrap(), "app");
        assert_eq!(name(&["./app/"]).unwrap(), "app");
        assert_eq!(name(&["--", "-odd.py"]).unwrap(), "-odd");
        assert_eq!(
            name(&["--check-hash-based-pycs", "always", "s.py"]).unwrap(),
            "s"
        );
    }

    #[test]
    fn modules_are_named_by_themselves() {
        assert_eq!(name(&["-m", "http.server", "8000"]).unwrap(), "http.server");
        assert_eq!(name(&["-mhttp.server"]).unwrap(), "http.server");
        assert_eq!(name(&["-Bum", "celery", "worker"]).unwrap(), "celery");
        assert_eq!(name(&["-O", "-m", "pkg.main"]).unwrap(), "pkg.main");
    }

    #[test]
    fn commands_stdin_and_prompts_have_no_name() {
        assert_eq!(name(&["-c", "print(1)"]), None);
        assert_eq!(name(&["-uc", "print(1)"]), None);
        assert_eq!(name(&["-"]), None);
        assert_eq!(name(&[]), None);
        assert_eq!(name(&["-i"]), None);
        assert_eq!(name(&["-m"]), None);
    }
}
