// Reads JUnit files with Maven Surefire's own report parser (surefire-report-parser, the
// reader behind maven-surefire-report-plugin) and prints what it understood, one line per
// file and per testcase, for tests/common/junit_rules.rs:
//   file PATH valid=BOOL suites=N
//   suite NAME tests=N failures=N errors=N skipped=N flakes=N cases=N
//   case NAME outcome=ok|failure|error|skipped
// Run as a single source file: java -cp PARSER.jar:LOGGER.jar SurefireRead.java FILE...
import java.util.List;
import org.apache.maven.plugin.surefire.log.api.NullConsoleLogger;
import org.apache.maven.plugins.surefire.report.ReportTestCase;
import org.apache.maven.plugins.surefire.report.ReportTestSuite;
import org.apache.maven.plugins.surefire.report.TestSuiteXmlParser;

public class SurefireRead {
    public static void main(String[] args) throws Exception {
        for (String path : args) {
            TestSuiteXmlParser parser = new TestSuiteXmlParser(new NullConsoleLogger());
            List<ReportTestSuite> suites = parser.parse(path);
            System.out.println("file " + path + " valid=" + parser.isValid() + " suites=" + suites.size());
            for (ReportTestSuite s : suites) {
                System.out.println("suite " + s.getFullClassName()
                        + " tests=" + s.getNumberOfTests()
                        + " failures=" + s.getNumberOfFailures()
                        + " errors=" + s.getNumberOfErrors()
                        + " skipped=" + s.getNumberOfSkipped()
                        + " flakes=" + s.getNumberOfFlakes()
                        + " cases=" + s.getTestCases().size());
                for (ReportTestCase c : s.getTestCases()) {
                    String outcome = c.hasFailure() ? "failure"
                            : c.hasError() ? "error"
                            : c.hasSkipped() ? "skipped" : "ok";
                    System.out.println("case " + c.getName() + " outcome=" + outcome);
                }
            }
        }
    }
}
