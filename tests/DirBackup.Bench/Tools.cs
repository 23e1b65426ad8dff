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
}
