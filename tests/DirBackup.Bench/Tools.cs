using System.Diagnostics;

namespace DirBackup.Bench;

/// <summary>Runs a tool of the benchmarks from the repository root; a failure throws with what the tool said.</summary>
public static class Tools
{
    public static async Task<string> RunAsync(string repo, string tool, IEnumerable<string> args, Dictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo(tool) { WorkingDirectory = repo, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }
        foreach (var (k, v) in env ?? [])
        {
            psi.Environment[k] = v;
        }
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} failed: {await stderr} {await stdout}");
        }
        return await stdout;
    }

    /// <summary>
    /// Times one run from the same starting point for every contender (MACHINE-NOTES.md): the previous run's output
    /// deleted and synced (deleting gigabytes stalls later writes on this disk), then, because the machine's memory
    /// turns slow again while it idles, warmed by writing and deleting a large tmpfs file right before the clock starts.
    /// </summary>
    public static async Task<double> TimeSettledAsync(string repo, string outDir, Func<Task> run, bool syncAfter = false)
    {
        if (Directory.Exists(outDir))
        {
            Directory.Delete(outDir, recursive: true);
        }
        Directory.CreateDirectory(outDir);
        await RunAsync(repo, "sync", []);
        await Task.Delay(2000);
        var warm = Path.Combine("/dev/shm", $"dirbackup-bench-warm-{Environment.ProcessId}");
        await RunAsync(repo, "dd", ["if=/dev/zero", $"of={warm}", "bs=1M", "count=4096", "status=none"]);
        File.Delete(warm);
        var watch = Stopwatch.StartNew();
        await run();
        if (syncAfter)
        {
            await RunAsync(repo, "sync", []);
        }
        return watch.Elapsed.TotalSeconds;
    }
}
