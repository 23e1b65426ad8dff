using System.Diagnostics;
using DirBackup.Errors;

namespace DirBackup.Qemu;

/// <summary>Runs a tool to completion; a failure becomes one line naming the tool and its last error line.</summary>
public static class ChildProcess
{
    public static async Task<string> RunAsync(string tool, IEnumerable<string> args, CancellationToken cancellationToken)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw DirBackupException.Io($"cannot start {tool}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw DirBackupException.Io($"cannot start {tool}: {e.Message} (is it installed?)");
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
            var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
            try
            {
                await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw;
            }
            if (process.ExitCode != 0)
            {
                var error = (await stderr.ConfigureAwait(false)).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() ?? $"exit code {process.ExitCode}";
                throw DirBackupException.Io($"{Path.GetFileName(tool)} failed: {error}");
            }
            return await stdout.ConfigureAwait(false);
        }
    }
}
