using System.Diagnostics;
using DirBackup.Backup;
using Xunit;

namespace DirBackup.Tests.Unit;

public sealed class ProcessTreeTests
{
    [Fact]
    public void A_process_stamp_holds_while_the_process_runs_and_not_after_it_ends_even_with_brackets_in_its_name()
    {
        // Perl names itself after $0, so the command name in /proc/<pid>/stat holds brackets and spaces.
        var info = new ProcessStartInfo("perl") { RedirectStandardOutput = true };
        info.ArgumentList.Add("-e");
        info.ArgumentList.Add("$0 = 'a) b (c'; $| = 1; print qq(up\n); sleep 60");
        using var process = Process.Start(info)!;
        Assert.Equal("up", process.StandardOutput.ReadLine());
        Assert.Contains("(a) b (c)", File.ReadAllText($"/proc/{process.Id}/stat"), StringComparison.Ordinal);

        var stamp = ProcessTree.StampOf(process.Id);
        Assert.NotNull(stamp);
        Assert.Equal(stamp, ProcessTree.StampOf(process.Id));
        Assert.True(ProcessTree.IsRunning(stamp.Value));
        Assert.False(ProcessTree.IsRunning(stamp.Value with { StartTicks = stamp.Value.StartTicks + 1 }));

        process.Kill();
        process.WaitForExit();
        Assert.False(ProcessTree.IsRunning(stamp.Value));
        Assert.Null(ProcessTree.StampOf(process.Id));
    }
}
