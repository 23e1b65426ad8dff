using System.Diagnostics;
using System.Runtime.ExceptionServices;
using DirBackup.Errors;

namespace DirBackup.Qemu;

/// <summary>Runs a tool to completion; a failure becomes one line naming the tool and its last error line.</summary>
public static class ChildProcess
{
    public static Task<string> RunAsync(string tool, IEnumerable<string> args, CancellationToken cancellationToken) =>
        RunAsync(tool, args, async (output, token) =>
        {
            using var reader = new StreamReader(output, leaveOpen: true);
            return await reader.ReadToEndAsync(token).ConfigureAwait(false);
        }, cancellationToken);

    /// <summary>
    /// Runs the tool with its output read as it comes by <paramref name="readOutput"/>, for output too large to hold.
    /// The tool's own failure wins over the reader's: a reader choking on a tool's cut-short output says less.
    /// </summary>
    public static async Task<T> RunAsync<T>(string tool, IEnumerable<string> args, Func<Stream, CancellationToken, Task<T>> readOutput, CancellationToken cancellationToken)
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
            var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
            var output = process.StandardOutput.BaseStream;
            T result = default!;
            Exception? readFailure = null;
            try
            {
                try
                {
                    result = await readOutput(output, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    readFailure = e;
                }
                // The tool must not block on a full pipe: what the reader left goes nowhere.
                await output.CopyToAsync(Stream.Null, cancellationToken).ConfigureAwait(false);
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
            if (readFailure is not null)
            {
                ExceptionDispatchInfo.Throw(readFailure);
            }
            return result;
        }
    }
}
