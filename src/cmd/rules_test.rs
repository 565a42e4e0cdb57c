//! `herald rules test`: the rule tests on a virtual clock, a diff per failing case.

use std::path::PathBuf;
use std::process::ExitCode;

use herald::config::Config;

use super::{runtime, Failure, Outcome};

/// Arguments of `herald rules test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// The rules directory, or one test file.
    #[arg(default_value = "rules")]
    path: PathBuf,
    /// Channels, sources and policy come from this config file.
    #[arg(long, short, default_value = "config/herald.toml")]
    config: PathBuf,
}

/// `herald rules test`: runs the rule tests; a diff with file:line per failing
/// case; exit 1 if any fails, 2 if a test file cannot be run.
pub fn test(args: &TestArgs) -> Outcome {
    let (path, config_path) = (args.path.as_path(), args.config.as_path());
    let config = Config::read(config_path).map_err(Failure::input)?;
    let (rules_dir, files) = herald::analyst::ruletest::test_files(path)
        .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    if files.is_empty() {
        return Err(Failure::input(format!(
            "no test files in {}/tests",
            path.display()
        )));
    }
    let runtime = runtime()?;
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let results = runtime
            .block_on(herald::analyst::ruletest::run_file(
                &config, &rules_dir, file,
            ))
            .map_err(Failure::input)?;
        for r in results {
            let at = format!("{}:{}", r.file.display(), r.line);
            match r.failure {
                None => {
                    passed += 1;
                    println!("ok    {at}  {}", r.name);
                }
                Some(diff) => {
                    failed += 1;
                    println!("FAIL  {at}  {}\n{diff}", r.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
