using System.Diagnostics;
using DirBackup.Qemu;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Unit;

/// <summary>Stopping a qemu-storage-daemon survives a SIGTERM that its main loop misses.</summary>
public sealed class StorageDaemonStopTests
{
    private static async Task<Process> StartAsync(string script)
    {
        var process = Process.Start(new ProcessStartInfo("bash", ["-c", script + "; echo ready; while :; do sleep 0.02; done"]) { RedirectStandardOutput = true })!;
        Assert.Equal("ready", await process.StandardOutput.ReadLineAsync());
        return process;
    }

    [Fact]
    public async Task A_process_that_misses_the_first_sigterm_is_stopped_by_the_next()
    {
        // Stands in for qemu-storage-daemon asleep in its poll with the exit flag already set: only a later signal wakes it.
        using var dir = new TempDir();
        string missed = dir.Combine("missed");
        using var process = await StartAsync($"trap 'if [ -e {missed} ]; then exit 0; fi; touch {missed}' TERM");

        Assert.True(await StorageDaemon.TerminateAsync(process, TimeSpan.FromSeconds(10)));

        Assert.True(File.Exists(missed), "the first SIGTERM reached the process");
        Assert.Equal(0, process.ExitCode);
    }

    [Fact]
    public async Task A_process_that_outlives_the_limit_is_reported_still_running()
    {
        using var process = await StartAsync("trap '' TERM");

        Assert.False(await StorageDaemon.TerminateAsync(process, TimeSpan.FromSeconds(1)));

        Assert.False(process.HasExited);
        process.Kill();
        await process.WaitForExitAsync();
    }
}
