// Subcommands of sd3tune. Each tools/cmd_*.cpp registers itself with SD3_COMMAND; none holds model logic.
// A failing command prints its Status and exits 1; bad usage exits 2 (CLI11's code for parse errors).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>

#include "core/status.h"

namespace sd3::tools {

using CommandRunner = std::function<Status()>;
// Adds a subcommand's options to `app` and returns it with the function that runs it once parsed.
using CommandSetup = std::function<std::pair<CLI::App*, CommandRunner>(CLI::App& app)>;

bool add_command(int order, CommandSetup setup);
void register_commands(CLI::App& app);
int run_selected(CLI::App& app);

}  // namespace sd3::tools

// At namespace scope in a cmd_*.cpp: SD3_COMMAND(10, setup_fn); the order sets where --help lists it.
#define SD3_COMMAND(order, setup) \
    static const bool SD3_CONCAT(sd3_command_registered_, __LINE__) = ::sd3::tools::add_command(order, setup)
