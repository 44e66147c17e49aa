// Subcommands of sd3tune. Each registers its options on the CLI11 app and runs through the library;
// none holds model logic. A failing command prints its Status and exits 1; bad usage exits 2 (CLI11's code).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "core/status.h"

namespace sd3::tools {

using CommandRunner = std::function<Status()>;

// Adds every subcommand to `app`.
void register_commands(CLI::App& app);
// Runs the subcommand the user chose; returns the process exit code.
int run_selected(CLI::App& app);

// Per-command registration, one per tools/cmd_*.cpp.
void register_info(CLI::App& app, std::vector<std::pair<CLI::App*, CommandRunner>>& runners);

}  // namespace sd3::tools
