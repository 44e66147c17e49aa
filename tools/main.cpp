// sd3tune: the command line. Picks a subcommand, lets it parse its options, and turns a Status into an exit code.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "core/log.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
    CLI::App app{"sd3tune: fine-tune Stable Diffusion 3 Medium with LoRA, and generate images with it"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "sd3tune 0.1.0");
    sd3::tools::register_commands(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // --help and --version end parsing successfully; every real usage error exits 2, as commands.h promises.
        const int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }
    return sd3::tools::run_selected(app);
}
